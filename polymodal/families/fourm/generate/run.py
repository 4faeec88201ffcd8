"""``polymodal generate``: chained any-to-any generation with a trained 4M model, to a PNG grid and a JSON file.

Inputs come from 4M shards (``--data``, the first ``--num-samples`` readable samples, prepared as for evaluation:
crop row 0, first caption) and/or a ``--caption`` string: a conditioning caption, or, when ``caption`` is a target,
a prompt ending in ``[S_1]`` to complete. When the shards also hold a target, the grid shows the sample's own value
(its ground truth) beside the prediction. The schedule comes from a YAML file in 4M's form (``--schedule``) or from
inline flags whose comma-separated values give one value per target (one value: every target)::

    polymodal generate --model runs/4m-tiny --tokenizer tok_depth@64=runs/tok-depth \\
        --text-tokenizer wordpiece.json --data 'scenes/[rgb,caption,crop_settings]/shard-00000.tar' \\
        --cond rgb@64 --targets tok_depth@64,caption --schemes roar,autoregressive --steps 4 --out gen/
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tokenizers import Tokenizer

from polymodal.config import ConfigError
from polymodal.data.multimodal.shard_patterns import expand_shard_pattern
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.skips import SampleError
from polymodal.families.fourm.generate.inputs import Entry, full_input, generation_batch, text_input, text_prompt_target
from polymodal.families.fourm.generate.outputs import (
    check_decoders,
    decode_generations,
    generation_columns,
    generations_record,
    write_generation_json,
)
from polymodal.families.fourm.generate.sampler import GenerationSampler
from polymodal.families.fourm.generate.schedules import GenerationSchedule, schedule_from_dict
from polymodal.families.fourm.grid.sheet import write_grid_png
from polymodal.families.fourm.modalities import CROP_SETTINGS, ModalityRegistry, ModalitySpec
from polymodal.families.fourm.model.fourm import FourM
from polymodal.families.fourm.samples import FourMSample
from polymodal.progress import progress
from polymodal.tokenizers.carried import TEXT, carried_tokenizer_paths
from polymodal.tokenizers.image.tokenizer import ImageTokenizer

log = logging.getLogger("polymodal")

CAPTION = "caption"
INLINE_FLAGS = {  # flag attribute -> schedule key
    "cond": "cond_domains",
    "targets": "target_domains",
    "schemes": "autoregression_schemes",
    "steps": "decoding_steps",
    "token_schedules": "token_decoding_schedules",
    "temps": "temps",
    "temp_schedules": "temp_schedules",
    "cfg_scales": "cfg_scales",
    "top_k": "top_k",
    "top_p": "top_p",
}


def schedule_config(args: argparse.Namespace) -> dict[str, Any]:
    """The schedule's dict form, from ``--schedule`` or the inline flags (not both)."""
    inline = {key: getattr(args, flag) for flag, key in INLINE_FLAGS.items() if getattr(args, flag) is not None}
    if args.cfg_grow:
        inline["cfg_grow_conditioning"] = True
    if args.schedule:
        if inline:
            raise ValueError(f"give either --schedule or inline schedule flags, not both (got {sorted(inline)})")
        config = yaml.safe_load(Path(args.schedule).read_text())
        if not isinstance(config, Mapping):
            raise ValueError(f"{args.schedule} must hold a mapping of schedule settings")
        return dict(config)
    if "target_domains" not in inline:
        raise ValueError("give --schedule <yaml> or at least --targets")
    for key in set(inline) - {"top_k", "top_p", "cfg_grow_conditioning"}:
        inline[key] = [value.strip() for value in inline[key].split(",")]
    return inline


def parse_tokenizer_flags(flags: Sequence[str]) -> dict[str, str]:
    """``["tok_rgb@64=dir", ...]`` -> ``{"tok_rgb@64": "dir"}``."""
    paths = {}
    for flag in flags:
        name, sep, path = flag.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--tokenizer takes MODALITY=DIR, got {flag!r}")
        if name in paths:
            raise ValueError(f"--tokenizer given twice for {name!r}")
        paths[name] = path
    return paths


def tokenizer_sources(args: argparse.Namespace, model: FourM) -> tuple[dict[str, str], str | None]:
    """The image tokenizers (by modality) and the text tokenizer to use: those the run carries (its
    ``tokenizers/`` folder), replaced by any given with ``--tokenizer`` / ``--text-tokenizer``."""
    carried = carried_tokenizer_paths(args.model)
    images = {name: str(path) for name, path in carried.items() if name in model.modalities}
    images.update(parse_tokenizer_flags(args.tokenizer))
    unknown = sorted(set(images) - set(model.modalities))
    if unknown:
        raise ValueError(f"--tokenizer given for {unknown}, which the model does not have ({list(model.modalities)})")
    text = args.text_tokenizer or (str(carried[TEXT]) if TEXT in carried else None)
    return images, text


def _cropped(spec: ModalitySpec) -> bool:
    """Whether a modality is read at a crop row (so needs the shards' crop settings): images and det boxes."""
    return spec.is_image or spec.stem == "det"


def read_shard_inputs(
    pattern: str,
    specs: Sequence[ModalitySpec],
    text_tokenizer: Tokenizer | None,
    num_samples: int,
    cache_dir: str | None = None,
) -> dict[str, torch.Tensor]:
    """``{modality: [n, ...]}`` from the first ``num_samples`` readable samples of a 4M shard pattern, prepared as
    for evaluation (:class:`FourMSample`); unreadable samples are skipped and counted in the log."""
    if any(spec.is_sequence for spec in specs) and text_tokenizer is None:
        raise ValueError("text inputs from --data need the WordPiece tokenizer (--text-tokenizer)")
    folders = list(dict.fromkeys(spec.folder for spec in specs))
    if any(_cropped(spec) for spec in specs):
        folders.append(CROP_SETTINGS)
    shards = MultimodalShards(pattern, modalities=folders, cache_dir=cache_dir)
    prepare = FourMSample(ModalityRegistry(list(specs)), text_tokenizer, train=False)
    samples, skipped = [], 0
    for sample_id in range(len(shards)):
        if len(samples) == num_samples:
            break
        try:
            samples.append(prepare(shards[sample_id], torch.Generator()))
        except SampleError as error:
            skipped += 1
            log.warning("skipped sample %d of %s: %s (%s)", sample_id, pattern, error.reason, error.detail)
    if not samples:
        raise ValueError(f"no readable sample in {pattern} ({skipped} skipped)")
    if skipped:
        log.warning("skipped %d unreadable samples of %s", skipped, pattern)
    return {spec.name: torch.stack([sample[spec.name] for sample in samples]) for spec in specs}


@dataclass
class GenerationInputs:
    """What a generation starts from: the batch's input ``entries`` (conditioning, and a caption prompt target),
    the ``truths`` of targets the ``--data`` shards hold (``{modality: [n, ...]}``, the same samples), the size."""

    entries: dict[str, Entry]
    truths: dict[str, torch.Tensor]
    batch_size: int


def truth_specs(pattern: str, targets: Sequence[str], modalities: Mapping[str, ModalitySpec]) -> list[ModalitySpec]:
    """The targets whose ground truth the shards of ``pattern`` hold (an image or det one with its crop settings)."""
    folders = expand_shard_pattern(pattern)
    held = [modalities[name] for name in targets if modalities[name].folder in folders]
    return [spec for spec in held if CROP_SETTINGS in folders or not _cropped(spec)]


def conditioning_entries(
    args: argparse.Namespace,
    schedule: GenerationSchedule,
    modalities: Mapping[str, ModalitySpec],
    text_tokenizer: Tokenizer | None,
) -> GenerationInputs:
    """The inputs of the generation batch and the ground truth read beside them (:class:`GenerationInputs`)."""
    entries: dict[str, Entry] = {}
    truths: dict[str, torch.Tensor] = {}
    from_data = [name for name in schedule.cond_domains if not (name == CAPTION and args.caption is not None)]
    batch_size = args.num_samples
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if from_data:
        if not args.data:
            raise ValueError(f"the conditioning modalities {from_data} need inputs: give --data (or --caption)")
        specs = [modalities[name] for name in from_data]
        truth = truth_specs(args.data, schedule.targets, modalities)
        values = read_shard_inputs(args.data, specs + truth, text_tokenizer, batch_size, args.cache_dir)
        entries = {name: full_input(modalities[name], values[name]) for name in from_data}
        truths = {spec.name: values[spec.name] for spec in truth}
        batch_size = next(iter(values.values())).shape[0]
    if args.caption is not None:
        if text_tokenizer is None:
            raise ValueError("--caption needs the WordPiece tokenizer (--text-tokenizer)")
        texts = [args.caption] * batch_size
        if CAPTION in schedule.cond_domains:
            entries[CAPTION] = text_input(modalities[CAPTION], text_tokenizer, texts)
        elif CAPTION in schedule.targets:
            entries[CAPTION] = text_prompt_target(modalities[CAPTION], text_tokenizer, texts)
        else:
            raise ValueError("--caption is given but caption is neither a conditioning modality nor a target")
    return GenerationInputs(entries, truths, batch_size)


def load_model(path: str, device: torch.device) -> FourM:
    from polymodal.checkpoint.weights import load_trained_model

    model, _ = load_trained_model(path)
    if not isinstance(model, FourM):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a 4M model")
    return model.to(device).eval()


def load_image_tokenizers(paths: Mapping[str, str], device: torch.device) -> dict[str, ImageTokenizer]:
    from polymodal.tokenizers.loading import load_image_tokenizer

    return {name: load_image_tokenizer(path).to(device) for name, path in paths.items()}


def run_generation(args: argparse.Namespace) -> Path:
    """Load everything, generate, decode, and write ``generations.png`` and ``generations.json`` into ``--out``."""
    from polymodal.tokenizers.text.wordpiece import load_wordpiece

    device = torch.device(args.device)
    config = schedule_config(args)
    model = load_model(args.model, device)
    schedule = schedule_from_dict(config, model.modalities)
    tokenizer_paths, text_path = tokenizer_sources(args, model)
    text_tokenizer = load_wordpiece(text_path) if text_path else None
    image_tokenizers = load_image_tokenizers(tokenizer_paths, device)
    check_decoders(schedule.targets, model.modalities, image_tokenizers, text_tokenizer)
    inputs = conditioning_entries(args, schedule, model.modalities, text_tokenizer)
    batch_size = inputs.batch_size
    batch = generation_batch(
        model.modalities, inputs.entries, schedule.targets, batch_size, device, schedule.cond_domains
    )
    generator = torch.Generator(device=device).manual_seed(args.seed)
    generated = batch
    with progress(f"generating {', '.join(schedule.targets)}", total=len(schedule.steps)) as advance:
        for _, _, after_step in GenerationSampler(model).generate_iter(batch, schedule, generator):
            generated = after_step
            advance(1)
    decoded = decode_generations(generated, model.modalities, schedule.targets, image_tokenizers, text_tokenizer)
    truth_entries = {name: full_input(model.modalities[name], value) for name, value in inputs.truths.items()}
    truths = decode_generations(truth_entries, model.modalities, [], image_tokenizers, text_tokenizer)
    out = Path(args.out)
    columns = generation_columns(decoded, schedule.targets, schedule.cond_domains, truths)
    png = write_grid_png(out / "generations.png", columns)
    record = {"model": str(args.model), "seed": args.seed, "schedule": [asdict(step) for step in schedule.steps]}
    write_generation_json(out / "generations.json", generations_record(decoded, record))
    for row in range(batch_size):
        texts = [f"{item.name}: {item.texts[row]!r}" for item in decoded if item.generated and item.texts is not None]
        if texts:
            print(f"#{row} " + "; ".join(texts))
    print(f"wrote {png} and {out / 'generations.json'}")
    return png


def generate_main(args: argparse.Namespace) -> int:
    """``polymodal generate``; bad input becomes one ``error:`` line (a :class:`ConfigError`)."""
    try:
        run_generation(args)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from error
    return 0
