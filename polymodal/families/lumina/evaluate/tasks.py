"""The tasks of ``polymodal eval`` for a model of the image–text family, on held-out synthetic scenes, each beside a
baseline.

Scenes are rendered in memory from a held-out seed (never trained on) at the run's squarest resolution bucket. A
scene's first caption names the colour and the shape of every visible object; its words are the ground truth
(:mod:`polymodal.data.synth.scoring`).

* ``image->caption``: the answer to the training corpus's captioning question about the scene's image (greedy by
  default). Colour and shape precision and recall of its words; baseline: the constant caption naming the colour
  and the shape present in most training-seed scenes.
* ``text->image``: an image drawn from the scene's caption (the training corpus's text-to-image request, with
  classifier-free guidance), judged by :class:`~polymodal.data.synth.judge.AttributeJudge` — a small classifier
  trained on renders, not the model under test. Precision = Σ |judged ∩ captioned| / Σ |judged| and recall =
  Σ |judged ∩ captioned| / Σ |captioned|, for colours and shapes. Baseline (the floor): the same images judged
  against another scene's caption (captions rolled by one). Ceiling: the real images passed through the run's
  image tokenizer (encode, decode), judged against their captions — what a perfect model could score through
  that tokenizer. The judge's scores on the real images themselves are recorded too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from polymodal.data.synth.held_out import HELD_OUT_SEED
from polymodal.data.synth.judge import AttributeJudge
from polymodal.data.synth.render import render_scenes
from polymodal.data.synth.scoring import (
    ATTRIBUTE_KINDS,
    Attributes,
    attribute_scores,
    caption_task,
    mentioned_attributes,
    metric_entry,
)
from polymodal.families.lumina.api import LuminaRun
from polymodal.families.lumina.evaluate.settings import LuminaEvalSettings
from polymodal.families.lumina.generate.settings import CAPTION
from polymodal.families.lumina.vocabulary import VocabularyLayout, parse_image_block
from polymodal.progress import progress

TASKS = ("image->caption", "text->image")


@dataclass
class HeldOutScenes:
    """Rendered scenes: rgb float ``[N, 3, H, W]`` in [0, 1] and each scene's first caption."""

    rgb: Tensor
    captions: list[str]

    @classmethod
    def render(cls, seed: int, count: int, size: tuple[int, int], purpose: str) -> HeldOutScenes:
        samples = render_scenes(seed, count, size, f"rendering {count} {purpose} scenes")
        rgb = torch.stack([sample["rgb"] for sample in samples]).float() / 255.0
        return cls(rgb, [sample["caption"][0] for sample in samples])


def as_images(pixels: Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [0, 1] -> RGB images."""
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(image) for image in array]


def judged_scores(judged: Sequence[Attributes], captions: Sequence[str]) -> dict[str, float | None]:
    """``{colour,shape}_{precision,recall}`` of what the judge saw against what ``captions`` name."""
    captioned = [mentioned_attributes(text) for text in captions]
    scores: dict[str, float | None] = {}
    for index, kind in enumerate(ATTRIBUTE_KINDS):
        pooled = attribute_scores([j[index] for j in judged], [c[index] for c in captioned])
        scores |= {f"{kind}_{name}": value for name, value in pooled.items()}
    return scores


def is_image_turn(turn: Tensor, rows: int, columns: int, layout: VocabularyLayout) -> bool:
    """Whether ``turn`` is one well-formed image block of ``rows x columns`` codes followed by ``<|eot|>``."""
    if len(turn) < 2 or int(turn[-1]) != layout.end_of_turn:
        return False
    try:
        return parse_image_block(turn[:-1].numpy(), layout).shape == (rows, columns)
    except ValueError:
        return False


@dataclass
class Predictions:
    """What the model said and drew for every scene, and the scenes through the image tokenizer."""

    captions: list[str]
    drawn: Tensor
    reconstructed: Tensor
    well_formed_blocks: int  # drawn turns that are one image block of the asked size and <|eot|>


@torch.no_grad()
def predict(run: LuminaRun, scenes: HeldOutScenes, settings: LuminaEvalSettings) -> Predictions:
    """Caption every scene, draw every caption, pass every scene through the tokenizer, ``batch_size`` at a time."""
    generator = torch.Generator(device=run.device).manual_seed(settings.sample_seed)
    size = tuple(scenes.rgb.shape[-2:])
    captions: list[str] = []
    drawn, reconstructed, well_formed = [], [], 0
    downsample = run.image_tokenizer.downsample
    rows, columns = size[0] // downsample, size[1] // downsample
    starts = range(0, len(scenes.captions), settings.batch_size)
    with progress(f"evaluating {len(scenes.captions)} scenes", total=len(starts)) as advance:
        for start in starts:
            rgb = scenes.rgb[start : start + settings.batch_size]
            prompts = scenes.captions[start : start + settings.batch_size]
            answers = run.answer(as_images(rgb), CAPTION, settings.captioning, settings.max_new_tokens, generator)
            captions += answers.texts
            images = run.text_to_image(prompts, size, settings.drawing, generator)
            drawn.append(images.pixels)
            well_formed += sum(is_image_turn(turn, rows, columns, run.layout) for turn in images.turns)
            tokenizer = run.image_tokenizer
            reconstructed.append(tokenizer.decode(tokenizer.encode(rgb.to(run.device))).float().cpu())
            advance(1)
    return Predictions(captions, torch.cat(drawn), torch.cat(reconstructed), well_formed)


def text_to_image_task(
    judge: AttributeJudge, scenes: HeldOutScenes, predictions: Predictions
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """The ``text->image`` report and the judge's scores on the real images (module docstring)."""
    judged = judge.judge(predictions.drawn)
    model = judged_scores(judged, scenes.captions)
    floor = judged_scores(judged, scenes.captions[1:] + scenes.captions[:1])
    ceiling = judged_scores(judge.judge(predictions.reconstructed), scenes.captions)
    task: dict[str, Any] = {
        "baseline": "the same images judged against another scene's caption (captions rolled by one)",
        "judge": "a colour and shape classifier trained on renders of the training seed (polymodal.data.synth.judge)",
    }
    for metric in model:
        task[metric] = metric_entry(model[metric], floor[metric], False, tokenizer_ceiling=ceiling[metric])
    return task, judged_scores(judge.judge(scenes.rgb), scenes.captions)


@dataclass
class LuminaEvaluation:
    """The report (JSON-ready), the scenes and the predictions (for the sample sheet)."""

    report: dict[str, Any]
    scenes: HeldOutScenes
    predictions: Predictions


def evaluate_lumina(
    run: LuminaRun,
    judge: AttributeJudge,
    num_scenes: int = 64,
    seed: int = HELD_OUT_SEED,
    settings: LuminaEvalSettings | None = None,
    target_size: int | None = None,
) -> LuminaEvaluation:
    """Both tasks (module docstring) on ``num_scenes`` scenes of ``seed`` at the run's squarest bucket."""
    settings = settings or LuminaEvalSettings()
    if num_scenes < 2:
        raise ValueError(f"num_scenes must be >= 2 (the text->image floor pairs scenes), got {num_scenes}")
    if seed in (settings.baseline_seed, settings.judge.seed):
        raise ValueError(f"the evaluation seed {seed} is a training seed of the model or the judge: pick another")
    size = run.image_sizes(target_size).default()
    scenes = HeldOutScenes.render(seed, num_scenes, size, "held-out")
    training = HeldOutScenes.render(settings.baseline_seed, settings.baseline_scenes, size, "training-seed")
    predictions = predict(run, scenes, settings)
    caption = caption_task(predictions.captions, scenes.captions, training.captions)
    caption["baseline"] += f" (most frequent in {settings.baseline_scenes} training-seed scenes)"
    drawing, judge_on_real = text_to_image_task(judge, scenes, predictions)
    report = {
        "num_scenes": num_scenes,
        "seed": seed,
        "image_size": list(size),
        "settings": asdict(settings),
        "well_formed_image_blocks": predictions.well_formed_blocks / num_scenes,
        "judge_on_real_images": judge_on_real,
        "tasks": {"image->caption": caption, "text->image": drawing},
        "skipped": {},
    }
    return LuminaEvaluation(report, scenes, predictions)
