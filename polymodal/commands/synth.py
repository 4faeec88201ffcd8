"""``polymodal synth``: generate the synthetic scene data set in one of the output layouts, and/or a preview grid."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from polymodal.commands import run_command

FORMATS = ("shards", "imagefolder", "conversations")


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``synth`` options to ``parser`` (a sub-command parser or a fresh one)."""
    parser.add_argument("--out", help="output root directory (omit to only write --preview)")
    parser.add_argument("--format", choices=FORMATS, default="shards", help="output layout")
    parser.add_argument("--num-samples", type=int, default=1000, help="scenes to render")
    parser.add_argument("--seed", type=int, default=0, help="scene i is a function of (seed, i)")
    parser.add_argument(
        "--size",
        type=int,
        default=64,
        help="image height = width in pixels (conversations: the longer side, a multiple of 16)",
    )
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="shards format only")
    parser.add_argument(
        "--modalities",
        help="comma-separated (default: all of the scene's), shards format only; twin_rgb and twin_caption add each "
        "scene's shape twin (the scene with one object in another shape, hard negatives for CLIP)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="imagefolder format only")
    parser.add_argument(
        "--label",
        default="count",
        help="imagefolder format only: the attribute that names the class folders, count, colour, shape or object "
        "(colour and shape, of the largest visible object); every layout also records all of them",
    )
    parser.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0,
        help="conversations format only: share of items made deliberately bad, each listed with its reason in "
        "bad_items.json (to test a reader's error report)",
    )
    parser.add_argument(
        "--jsonl", action="store_true", help="conversations format only: write conversations.jsonl, an item a line"
    )
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--preview", help="also write a PNG grid of a few scenes here")
    parser.add_argument("--preview-rows", type=int, default=4, help="scenes in the preview grid")
    return parser


def main(argv: list[str]) -> int:
    return run_command("polymodal synth", __doc__, add_synth_arguments, argv, synth_main)


def synth_main(args: argparse.Namespace) -> int:
    """Run the generation an ``add_synth_arguments`` namespace describes; bad values raise ConfigError."""
    from polymodal.config import ConfigError

    try:
        return _generate(args)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def _generate(args: argparse.Namespace) -> int:
    from polymodal.data.synth.conversations import write_conversations
    from polymodal.data.synth.labels import check_attribute
    from polymodal.data.synth.preview import write_preview
    from polymodal.data.synth.writers import MODALITY_EXTENSIONS, write_imagefolder, write_shards

    if args.out is None and args.preview is None:
        raise ValueError("nothing to do: give --out and/or --preview")
    check_attribute(args.label)
    if args.out is not None:
        out = Path(args.out)
        if args.format == "shards":
            names = args.modalities.split(",") if args.modalities else MODALITY_EXTENSIONS
            modalities = tuple(m.strip() for m in names if m.strip())
            write_shards(out, args.num_samples, args.samples_per_shard, args.seed, args.size, args.workers, modalities)
        elif args.format == "imagefolder":
            write_imagefolder(out, args.num_samples, args.val_fraction, args.seed, args.size, args.workers, args.label)
        else:
            write_conversations(
                out, args.num_samples, args.seed, args.size, args.workers, args.bad_fraction, args.jsonl
            )
        print(f"wrote {args.num_samples} samples ({args.format}) to {out}")
    if args.preview is not None:
        if args.preview_rows < 1:
            raise ValueError(f"--preview-rows must be >= 1, got {args.preview_rows}")
        print(f"preview: {write_preview(args.preview, args.seed, list(range(args.preview_rows)), args.size)}")
    return 0
