"""``polymodal generate --model RUN`` for the image–text family: images from prompts (``--prompt``,
``--prompts-file``) and/or answers about images (``--image``), drawn as ``generations.png`` (each image with its
prompt or answer under it: a row per prompt or image, a column per sample) and recorded in ``generations.json``
(the texts and the generated token ids) in ``--out``::

    polymodal generate --model runs/lumina-tiny --prompt "a red cube left of a blue ball" --num-samples 4 --out gen/
    polymodal generate --model runs/lumina-tiny --image photo.png --out gen/

The run is a run directory (its newest checkpoint), a checkpoint or an export, with the tokenizers it carries.
Each of the ``--num-samples`` rounds is one batch of every prompt (with classifier-free guidance, twice as many
rows) and one of every image.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from polymodal.config import ConfigError
from polymodal.families.lumina.api import LuminaRun
from polymodal.families.lumina.generate.grid import write_sheet
from polymodal.families.lumina.generate.settings import SamplingSettings
from polymodal.families.lumina.rejections import Rejected
from polymodal.files import atomic_output
from polymodal.runs import load_run
from polymodal.tokenizers.image.evaluate import to_viewable_rgb


def read_prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt``s, then the non-blank lines of ``--prompts-file``."""
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    return prompts


def settings_of(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(args.temperature, args.image_top_k, args.text_top_k, args.top_p, args.cfg_scale)


Cell = tuple[Image.Image, str, dict[str, Any]]  # a picture and its text on the sheet, and its JSON record


def drawn_images(
    run: LuminaRun, prompts: list[str], size: tuple[int, int], args: argparse.Namespace, generator: torch.Generator
) -> list[Cell]:
    """One image per prompt."""
    images = run.text_to_image(prompts, size, settings_of(args), generator, args.target_size)
    return [
        (
            Image.fromarray(to_viewable_rgb(pixels, "rgb")),
            prompt,
            {"task": "text_to_image", "prompt": prompt, "size": list(size), "tokens": turn.tolist()},
        )
        for prompt, pixels, turn in zip(prompts, images.pixels, images.turns, strict=True)
    ]


def answers(run: LuminaRun, args: argparse.Namespace, generator: torch.Generator) -> list[Cell]:
    """One answer to ``--question`` per ``--image`` (shown as the model read it)."""
    captions = run.caption(
        args.image, args.question, settings_of(args), args.max_new_tokens, generator, args.target_size, args.seed
    )
    return [
        (image, text, {"task": "caption", "image": source, "question": args.question, "text": text, "tokens": turn})
        for source, image, text, turn in zip(args.image, captions.images, captions.texts, captions.turns, strict=True)
    ]


def run_generation(args: argparse.Namespace) -> Path:
    """Load the run, generate, and write ``generations.png`` and ``generations.json`` into ``--out``."""
    prompts = read_prompts(args)
    if not prompts and not args.image:
        raise ValueError("nothing to generate: give --prompt, --prompts-file and/or --image")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    run = load_run(args.model, args.device)
    if not isinstance(run, LuminaRun):
        raise ValueError(f"{args.model} is not a model of the image-text family")
    size = (args.size or run.image_sizes(args.target_size).default()) if prompts else None
    generator = torch.Generator(device=run.device).manual_seed(args.seed)
    rounds = [
        (drawn_images(run, prompts, size, args, generator) if prompts else [])
        + (answers(run, args, generator) if args.image else [])
        for _ in range(args.num_samples)
    ]
    # a row per prompt or image, a column per sample
    cells = [(sample, drawn[row]) for row in range(len(rounds[0])) for sample, drawn in enumerate(rounds)]
    out = Path(args.out)
    png = write_sheet(out / "generations.png", [c[0] for _, c in cells], [c[1] for _, c in cells], args.num_samples)
    samples = [{**record, "sample": sample} for sample, (_, _, record) in cells]
    record = {"model": str(args.model), "seed": args.seed, "settings": asdict(settings_of(args)), "samples": samples}
    with atomic_output(out / "generations.json") as staged:
        staged.write_text(json.dumps(record, indent=2) + "\n")
    for sample in samples:
        if sample["task"] == "caption":
            print(f"{sample['image']} #{sample['sample']}: {sample['text']!r}")
    print(f"wrote {png} and {out / 'generations.json'}")
    return png


def generate_main(args: argparse.Namespace) -> int:
    """``polymodal generate``; bad input becomes one ``error:`` line (a :class:`ConfigError`)."""
    try:
        run_generation(args)
    except (ValueError, FileNotFoundError, Rejected) as error:
        raise ConfigError(str(error)) from error
    except KeyError as error:  # a tokenizer the run does not carry; its message is the first argument
        raise ConfigError(str(error.args[0])) from error
    return 0
