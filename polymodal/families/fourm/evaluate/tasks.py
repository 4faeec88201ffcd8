"""The tasks of ``polymodal eval`` for a 4M: a trained 4M on held-out synthetic scenes, each beside a trivial
baseline.

Scenes are rendered in memory from a held-out seed (:data:`~polymodal.data.synth.held_out.HELD_OUT_SEED`, never
trained on); the baselines are fitted on scenes of the training seed (:data:`TRAINING_SEED`, ``polymodal synth``'s
default), so they know the data distribution but not the evaluated scene. The ground-truth caption of a scene is
its first one (as :class:`~polymodal.families.fourm.samples.FourMSample` evaluates), which names every visible object.

Tasks (skipped, with the reason, when the model lacks a modality or a tokenizer is not given):

* ``rgb->depth``: ``tok_depth`` from the rgb pixels alone in one MaskGIT step at temperature 0 (4M's RGB→X
  default), decoded by the depth tokenizer. Mean absolute relative error ``mean(|d̂ − d| / d)`` and RMSE of log
  depth ``sqrt(mean((log d̂ − log d)²))``, both over every pixel of every scene (lower is better). Baseline: the
  per-pixel mean depth map of the training-seed scenes.
* ``rgb->semseg``: ``tok_semseg`` the same way; mean IoU over all scenes' pixels (:func:`mean_iou`). Baseline:
  the training-seed scenes' most frequent class everywhere.
* ``rgb->caption``: the caption from the rgb pixels, autoregressive at temperature 0. Its colour words
  (:data:`PALETTE`) and shape words (:data:`SHAPES`, plural or not) are compared with the scene's:
  precision = Σ |mentioned ∩ present| / Σ |mentioned| and recall = Σ |mentioned ∩ present| / Σ |present|,
  sums over scenes of distinct words, for colours and shapes separately. Baseline: the constant caption
  ``"a <colour> <shape>"`` naming the colour and the shape present in most training-seed scenes.
* ``caption->rgb``: ``tok_rgb`` from the scene's caption (ROAR by default), decoded to pixels by the rgb
  tokenizer and fed back as the rgb input to predict semseg as in ``rgb->semseg``. Agreement
  (``captioned_shapes_drawn``) = Σ |captioned shapes ∩ shapes present in the predicted semseg| / Σ |captioned
  shapes|, a shape being present when its class covers at least ``presence_fraction`` of the image; its converse
  ``drawn_shapes_captioned`` divides by Σ |present shapes| instead (a map showing every class scores 1 on the
  first, not on this). Baseline: the same predictions scored against another scene's caption (captions rolled
  by one); reference: the scores of the semseg predicted from the real rgb (``real_rgb_reference``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from polymodal.data.synth.held_out import HELD_OUT_SEED
from polymodal.data.synth.render import render_scenes
from polymodal.data.synth.scoring import (
    attribute_scores,
    caption_task,
    mentioned_attributes,
    metric_entry,
    shapes_present,
)
from polymodal.families.fourm.evaluate.metrics import abs_rel_error, log_rmse, semseg_miou
from polymodal.families.fourm.evaluate.settings import EvalSettings
from polymodal.families.fourm.generate.inputs import Entry, full_input, generation_batch, text_input
from polymodal.families.fourm.generate.outputs import DecodedModality, check_decoders, decode_generations
from polymodal.families.fourm.generate.sampler import GenerationSampler
from polymodal.families.fourm.generate.schedules import TargetSettings, build_schedule
from polymodal.families.fourm.grid.columns import Column, input_title, prediction_columns
from polymodal.families.fourm.modalities import ModalitySpec
from polymodal.families.fourm.model.fourm import FourM
from polymodal.families.fourm.samples import normalise_rgb
from polymodal.progress import progress
from polymodal.tokenizers.image.tokenizer import ImageTokenizer

log = logging.getLogger("polymodal")

CAPTION = "caption"
TASKS = ("rgb->depth", "rgb->semseg", "rgb->caption", "caption->rgb")


@dataclass
class Scenes:
    """Rendered scenes: rgb float [N, 3, H, W] in [0, 1], depth [N, 1, H, W] metres, semseg int64 [N, H, W] and
    each scene's first caption."""

    rgb: Tensor
    depth: Tensor
    semseg: Tensor
    captions: list[str]


def scenes_of(seed: int, num_scenes: int, size: int, purpose: str) -> Scenes:
    """Scenes ``0 .. num_scenes - 1`` of ``seed`` at ``size`` pixels (``purpose`` names them in the progress)."""
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    samples = render_scenes(seed, num_scenes, size, f"rendering {num_scenes} {purpose} scenes")
    return Scenes(
        rgb=torch.stack([s["rgb"] for s in samples]).float() / 255.0,
        depth=torch.stack([s["depth"] for s in samples]).float(),
        semseg=torch.stack([s["semseg"] for s in samples]).long(),
        captions=[s["caption"][0] for s in samples],
    )


# --- metrics ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskModalities:
    """The model's modality names the tasks use at one image size (None: the model lacks it in that role)."""

    rgb: str | None
    depth: str | None
    semseg: str | None
    tok_rgb: str | None
    caption_input: str | None
    caption_target: str | None

    @classmethod
    def of(cls, modalities: Mapping[str, ModalitySpec], size: int) -> TaskModalities:
        def named(name: str, role: str) -> str | None:
            spec = modalities.get(name)
            return name if spec is not None and getattr(spec, role) else None

        rgb = named(f"rgb@{size}", "encoder")
        return cls(
            rgb=rgb if rgb is not None and modalities[rgb].is_pixels else None,
            depth=named(f"tok_depth@{size}", "decoder"),
            semseg=named(f"tok_semseg@{size}", "decoder"),
            tok_rgb=named(f"tok_rgb@{size}", "decoder"),
            caption_input=named(CAPTION, "encoder"),
            caption_target=named(CAPTION, "decoder"),
        )


def pixel_size(modalities: Mapping[str, ModalitySpec]) -> int:
    """The resolution of the model's only rgb pixel input (else a ValueError asking for ``image_size``)."""
    sizes = sorted({spec.resolution for spec in modalities.values() if spec.stem == "rgb" and spec.is_pixels})
    if len(sizes) != 1:
        raise ValueError(f"the model has rgb pixel inputs at {sizes or 'no'} resolutions; give image_size")
    return sizes[0]


def skipped_tasks(
    names: TaskModalities, image_tokenizers: Mapping[str, ImageTokenizer], text_tokenizer: Tokenizer | None
) -> dict[str, str]:
    """``{task: why it cannot run}`` for the tasks this model and these tokenizers cannot evaluate."""
    rgb = [] if names.rgb else ["an rgb pixel input"]
    text = [] if text_tokenizer is not None else ["the text tokenizer"]

    def decodable(name: str | None, stem: str) -> list[str]:
        if name is None:
            return [f"a {stem} target"]
        return [] if name in image_tokenizers else [f"a {name} tokenizer"]

    missing = {
        "rgb->depth": rgb + decodable(names.depth, "tok_depth"),
        "rgb->semseg": rgb + decodable(names.semseg, "tok_semseg"),
        "rgb->caption": rgb + ([] if names.caption_target else ["a caption target"]) + text,
        "caption->rgb": ([] if names.caption_input else ["a caption input"])
        + text
        + decodable(names.tok_rgb, "tok_rgb")
        + rgb
        + decodable(names.semseg, "tok_semseg"),
    }
    return {task: "needs " + ", ".join(needs) for task, needs in missing.items() if needs}


class TaskRunner:
    """One-target generations with a model and its decoders: rgb→X at temperature 0, caption→rgb by the settings.
    Every draw comes from one generator seeded with ``settings.sample_seed``."""

    def __init__(
        self,
        model: FourM,
        image_tokenizers: Mapping[str, ImageTokenizer],
        text_tokenizer: Tokenizer | None,
        settings: EvalSettings,
    ) -> None:
        self.model, self.image_tokenizers, self.text_tokenizer = model, image_tokenizers, text_tokenizer
        self.sampler = GenerationSampler(model)
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(settings.sample_seed)
        self.settings = settings

    def _run(self, inputs: dict[str, Entry], target: TargetSettings) -> DecodedModality:
        modalities = self.model.modalities
        schedule = build_schedule(list(inputs), [target], modalities)
        size = next(iter(inputs.values()))["tensor"].shape[0]
        batch = generation_batch(modalities, inputs, schedule.targets, size, self.device, schedule.cond_domains)
        generated = self.sampler.generate(batch, schedule, self.generator)
        tokenizers = self.image_tokenizers
        decoded = decode_generations(generated, modalities, schedule.targets, tokenizers, self.text_tokenizer)
        return next(item for item in decoded if item.name == target.modality)

    def rgb_input(self, name: str, rgb: Tensor) -> dict[str, Entry]:
        """rgb in [0, 1] as the model's normalised pixel input."""
        return {name: full_input(self.model.modalities[name], normalise_rgb(rgb).to(self.device))}

    def image_from(self, inputs: dict[str, Entry], target: str) -> Tensor:
        """A token-grid target in one MaskGIT step at temperature 0, decoded (natural units, on the CPU)."""
        return self._run(inputs, TargetSettings(target, "maskgit", steps=1, temperature=0.0)).images

    def caption_from(self, inputs: dict[str, Entry], target: str) -> list[str]:
        """A text target, autoregressive at temperature 0, decoded."""
        return self._run(inputs, TargetSettings(target, temperature=0.0)).texts

    def rgb_from_captions(self, caption: str, tok_rgb: str, captions: Sequence[str]) -> Tensor:
        """``tok_rgb`` generated from ``captions`` and decoded to rgb in [0, 1]."""
        s = self.settings
        inputs = {caption: text_input(self.model.modalities[caption], self.text_tokenizer, captions)}
        target = TargetSettings(
            tok_rgb, s.rgb_scheme, steps=s.rgb_steps, temperature=s.rgb_temperature, cfg_scale=s.rgb_cfg_scale
        )
        return self._run(inputs, target).images.float()


@dataclass
class Predictions:
    """Every task's outputs over all scenes (None: the task did not run)."""

    depth: Tensor | None = None
    semseg: Tensor | None = None
    captions: list[str] | None = None
    generated_rgb: Tensor | None = None
    generated_semseg: Tensor | None = None


@dataclass
class FourMEvaluation:
    """The report (JSON-ready) and the sample columns of ``samples.png`` (one row per scene)."""

    report: dict[str, Any]
    columns: list[Column]


def predict(
    runner: TaskRunner, names: TaskModalities, skipped: Mapping[str, str], scenes: Scenes, batch_size: int
) -> Predictions:
    """Run every task that is not ``skipped`` on ``scenes``, ``batch_size`` scenes at a time."""
    runs = {
        "depth": "rgb->depth" not in skipped,
        "semseg": "rgb->semseg" not in skipped or "caption->rgb" not in skipped,
        "captions": "rgb->caption" not in skipped,
        "generated_rgb": "caption->rgb" not in skipped,
        "generated_semseg": "caption->rgb" not in skipped,
    }
    parts: dict[str, list] = {key: [] for key, runs_it in runs.items() if runs_it}
    starts = range(0, len(scenes.captions), batch_size)
    with progress(f"evaluating {len(scenes.captions)} scenes", total=len(starts)) as advance:
        for start in starts:
            _predict_batch(runner, names, scenes, start, batch_size, parts)
            advance(1)
    return Predictions(**{key: value if key == "captions" else torch.cat(value) for key, value in parts.items()})


def _predict_batch(
    runner: TaskRunner, names: TaskModalities, scenes: Scenes, start: int, batch_size: int, parts: dict[str, list]
) -> None:
    """Append the predictions for scenes ``start .. start + batch_size - 1`` to ``parts``."""
    inputs = runner.rgb_input(names.rgb, scenes.rgb[start : start + batch_size]) if names.rgb else {}
    if "depth" in parts:
        parts["depth"].append(runner.image_from(inputs, names.depth).float())
    if "semseg" in parts:
        parts["semseg"].append(runner.image_from(inputs, names.semseg))
    if "captions" in parts:
        parts["captions"].extend(runner.caption_from(inputs, names.caption_target))
    if "generated_rgb" in parts:
        captions = scenes.captions[start : start + batch_size]
        generated = runner.rgb_from_captions(names.caption_input, names.tok_rgb, captions)
        parts["generated_rgb"].append(generated)
        parts["generated_semseg"].append(runner.image_from(runner.rgb_input(names.rgb, generated), names.semseg))


def _depth_task(predicted: Tensor, scenes: Scenes, training: Scenes, baseline_name: str) -> dict[str, Any]:
    mean_map = training.depth.mean(dim=0, keepdim=True).expand_as(scenes.depth)
    return {
        "baseline": f"per-pixel mean depth map of {baseline_name}",
        "abs_rel": metric_entry(abs_rel_error(predicted, scenes.depth), abs_rel_error(mean_map, scenes.depth), True),
        "log_rmse": metric_entry(log_rmse(predicted, scenes.depth), log_rmse(mean_map, scenes.depth), True),
    }


def _semseg_task(predicted: Tensor, scenes: Scenes, training: Scenes, baseline_name: str) -> dict[str, Any]:
    majority = int(torch.bincount(training.semseg.flatten()).argmax())
    constant = torch.full_like(scenes.semseg, majority)
    return {
        "baseline": f"class {majority} (the majority class of {baseline_name}) everywhere",
        "miou": metric_entry(semseg_miou(predicted, scenes.semseg), semseg_miou(constant, scenes.semseg), False),
    }


def _agreement(semseg: Tensor, captions: Sequence[str], min_fraction: float) -> dict[str, float | None]:
    """``captioned_shapes_drawn`` (the agreement) and ``drawn_shapes_captioned`` (its converse, which a semseg map
    covering every class fails) of predicted ``semseg`` maps with ``captions``."""
    captioned = [mentioned_attributes(text)[1] for text in captions]
    scores = attribute_scores(captioned, shapes_present(semseg, min_fraction))
    return {"captioned_shapes_drawn": scores["precision"], "drawn_shapes_captioned": scores["recall"]}


def _caption_to_rgb_task(
    generated_semseg: Tensor, real_semseg: Tensor, scenes: Scenes, fraction: float
) -> dict[str, Any]:
    model = _agreement(generated_semseg, scenes.captions, fraction)
    baseline = _agreement(generated_semseg, scenes.captions[1:] + scenes.captions[:1], fraction)
    reference = _agreement(real_semseg, scenes.captions, fraction)
    task: dict[str, Any] = {
        "baseline": "the same predictions scored against another scene's caption (captions rolled by one)",
        "presence_fraction": fraction,
    }
    for metric in model:
        task[metric] = metric_entry(model[metric], baseline[metric], False, real_rgb_reference=reference[metric])
    return task


def _columns(names: TaskModalities, scenes: Scenes, predictions: Predictions) -> list[Column]:
    """The ``samples.png`` columns: the rgb input, then what the model made of it beside the rendered ground truth,
    and the rgb it drew from the ground-truth caption."""
    columns = [Column(input_title(names.rgb or "rgb"), "rgb", scenes.rgb)]
    from_rgb = [names.rgb]
    if predictions.depth is not None:
        columns += prediction_columns(names.depth, from_rgb, "depth", predictions.depth, scenes.depth)
    if predictions.semseg is not None:
        columns += prediction_columns(names.semseg, from_rgb, "semseg", predictions.semseg, scenes.semseg)
    if predictions.captions is not None:
        columns += prediction_columns(names.caption_target, from_rgb, "text", predictions.captions, scenes.captions)
    if predictions.generated_rgb is not None:
        columns += prediction_columns(names.tok_rgb, [names.caption_input], "rgb", predictions.generated_rgb)
    return columns


@torch.no_grad()
def evaluate_fourm(
    model: FourM,
    image_tokenizers: Mapping[str, ImageTokenizer],
    text_tokenizer: Tokenizer | None,
    num_scenes: int = 64,
    seed: int = HELD_OUT_SEED,
    image_size: int | None = None,
    settings: EvalSettings | None = None,
) -> FourMEvaluation:
    """Every task the model and the tokenizers allow (module docstring) on ``num_scenes`` scenes of ``seed``
    rendered at ``image_size`` (default: the model's rgb pixel resolution)."""
    settings = settings or EvalSettings()
    if not isinstance(model, FourM):
        raise ValueError(f"evaluate_fourm needs a FourM model, got {type(model).__name__}")
    if num_scenes < 2:
        raise ValueError(f"num_scenes must be >= 2 (the caption->rgb baseline pairs scenes), got {num_scenes}")
    if seed == settings.baseline_seed:
        raise ValueError(f"the evaluation seed {seed} is the training seed: pick a held-out seed")
    settings.check()
    size = image_size or pixel_size(model.modalities)
    check_decoders([], model.modalities, image_tokenizers, text_tokenizer)
    names = TaskModalities.of(model.modalities, size)
    skipped = skipped_tasks(names, image_tokenizers, text_tokenizer)
    for task, reason in skipped.items():
        log.warning("skipping %s at %d px: it %s", task, size, reason)
    if len(skipped) == len(TASKS):
        raise ValueError(f"no task can run at {size} px: {skipped}")
    scenes = scenes_of(seed, num_scenes, size, "held-out")
    training = scenes_of(settings.baseline_seed, settings.baseline_scenes, size, "baseline")
    baseline_name = f"{settings.baseline_scenes} training-seed scenes (seed {settings.baseline_seed})"
    runner = TaskRunner(model.eval(), image_tokenizers, text_tokenizer, settings)
    predictions = predict(runner, names, skipped, scenes, settings.batch_size)
    tasks: dict[str, Any] = {}
    if "rgb->depth" not in skipped:
        depth = _depth_task(predictions.depth, scenes, training, baseline_name)
        tasks["rgb->depth"] = {"target": names.depth, **depth}
    if "rgb->semseg" not in skipped:
        semseg = _semseg_task(predictions.semseg, scenes, training, baseline_name)
        tasks["rgb->semseg"] = {"target": names.semseg, **semseg}
    if "rgb->caption" not in skipped:
        caption = caption_task(predictions.captions, scenes.captions, training.captions)
        caption["baseline"] += f" (most frequent in {baseline_name})"
        tasks["rgb->caption"] = {"target": names.caption_target, **caption}
    if "caption->rgb" not in skipped:
        fraction = settings.presence_fraction
        agreement = _caption_to_rgb_task(predictions.generated_semseg, predictions.semseg, scenes, fraction)
        tasks["caption->rgb"] = {"target": names.tok_rgb, **agreement}
    report = {
        "num_scenes": num_scenes,
        "seed": seed,
        "image_size": size,
        "settings": asdict(settings),
        "tasks": tasks,
        "skipped": skipped,
    }
    return FourMEvaluation(report, _columns(names, scenes, predictions))
