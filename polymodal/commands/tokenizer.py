"""``polymodal tokenizer train-text`` and ``polymodal tokenizer eval``.

The tokenizers are handed their corpus: this is where the default corpora are chosen (the standard library's
docstrings for BPE; synthetic captions and det strings plus the docstrings for 4M's WordPiece) and where the
held-out synthetic scenes an image tokenizer is evaluated on are rendered.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from polymodal.commands import DefaultsHelpFormatter, run_command

HELD_OUT_SEED_HELP = "scene seed (default: the held-out seed 10000; keep it unlike training's)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="tokenizer", required=True)
    text = verbs.add_parser(
        "train-text",
        formatter_class=DefaultsHelpFormatter,
        help="byte-level BPE (LLM/AR; default corpus: stdlib docstrings) or 4M's WordPiece "
        "(default corpus: synthetic captions, det strings and docstrings)",
    )
    text.add_argument("inputs", nargs="*", help=".txt/.jsonl files, directories or globs")
    text.add_argument("--kind", choices=("bpe", "wordpiece"), default="bpe", help="bpe: LLM/AR recipes; wordpiece: 4M")
    text.add_argument("--output", required=True, help="tokenizer.json to write")
    text.add_argument("--vocab-size", type=int, default=8192, help="tokens in the vocabulary, specials included")
    text.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences of a learnt piece")
    text.set_defaults(run=_train_text)

    evaluate = verbs.add_parser(
        "eval",
        formatter_class=DefaultsHelpFormatter,
        help="an image tokenizer vs down-then-up sampling on held-out scenes; writes reconstructions.png",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint, a run dir (newest) or an export dir")
    evaluate.add_argument("--num-images", type=int, default=64, help="held-out synthetic scenes to evaluate on")
    evaluate.add_argument("--image-size", type=int, default=64, help="scene side in pixels")
    evaluate.add_argument("--seed", type=int, help=HELD_OUT_SEED_HELP)
    evaluate.add_argument("--rows", type=int, default=8, help="samples shown in reconstructions.png")
    evaluate.add_argument("--out", required=True, help="directory for eval.json and reconstructions.png")
    evaluate.set_defaults(run=_evaluate)


def main(argv: list[str]) -> int:
    return run_command("polymodal tokenizer", __doc__, add_arguments, argv)


def _train_text(args: argparse.Namespace) -> int:
    train_text_tokenizer(args.kind, args.inputs or None, Path(args.output), args.vocab_size, args.min_frequency)
    return 0


def train_text_tokenizer(
    kind: str,
    inputs: list[str] | None,
    output: Path,
    vocab_size: int,
    min_frequency: int = 2,
    num_scenes: int = 2000,
    seed: int = 0,
) -> Path:
    """Train a ``kind`` ("bpe" or "wordpiece") tokenizer on ``inputs`` (files, dirs, globs) or, if None, the default
    corpus of that kind (module docstring); save it to ``output`` and print a one-line summary."""
    from polymodal.data.text.corpus import read_documents, stdlib_docstrings
    from polymodal.tokenizers.text.bpe import save_tokenizer, train_bpe

    start = time.perf_counter()
    print(f"reading the corpus and training a {kind} tokenizer of {vocab_size} tokens ...", file=sys.stderr)
    if kind == "wordpiece":
        from polymodal.data.synth.texts import synthetic_scene_texts
        from polymodal.tokenizers.text.wordpiece import train_wordpiece

        default = synthetic_scene_texts(num_scenes, seed) + stdlib_docstrings("train") if not inputs else []
        docs = read_documents(inputs) if inputs else default
        tokenizer, name = train_wordpiece(docs, vocab_size, min_frequency=min_frequency), "WordPiece"
    elif kind == "bpe":
        docs = read_documents(inputs) if inputs else stdlib_docstrings("train")
        tokenizer, name = train_bpe(docs, vocab_size, min_frequency), "BPE"
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'bpe' or 'wordpiece'")
    path = save_tokenizer(tokenizer, output)
    print(
        f"trained {name} tokenizer: vocab {tokenizer.get_vocab_size()} (requested {vocab_size}), "
        f"{len(docs)} docs, {sum(map(len, docs)):,} chars, {time.perf_counter() - start:.1f}s -> {path}"
    )
    return path


def _evaluate(args: argparse.Namespace) -> int:
    from polymodal.config import ConfigError

    try:
        return evaluate_image_tokenizer(args)
    except ValueError as error:  # not an image tokenizer, bad sizes, ...
        raise ConfigError(str(error)) from error


def evaluate_image_tokenizer(args: argparse.Namespace) -> int:
    """``polymodal tokenizer eval``: print the table, write ``eval.json`` and ``reconstructions.png``."""
    from polymodal.data.synth.held_out import HELD_OUT_SEED, held_out_scenes
    from polymodal.data.synth.render import FAR
    from polymodal.data.synth.scene import SEMSEG_CLASSES
    from polymodal.tokenizers.image.evaluate import (
        down_up_baseline,
        evaluate_tokenizer,
        format_table,
        reconstruct,
        write_reconstructions_png,
    )
    from polymodal.tokenizers.loading import load_image_tokenizer

    if args.rows < 1:
        raise ValueError(f"--rows must be >= 1, got {args.rows}")
    seed = HELD_OUT_SEED if args.seed is None else args.seed
    tokenizer = load_image_tokenizer(args.checkpoint)
    images = held_out_scenes(tokenizer.modality, args.num_images, args.image_size, seed)
    results = evaluate_tokenizer(tokenizer, tokenizer.modality, images, tokenizer.downsample, depth_range=FAR)
    results["checkpoint"], results["seed"] = str(args.checkpoint), seed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    shown = images[: args.rows]
    recons, _ = reconstruct(tokenizer, shown)
    baseline = down_up_baseline(shown, tokenizer.modality, tokenizer.downsample)
    png = out / "reconstructions.png"
    write_reconstructions_png(png, shown, recons, baseline, tokenizer.modality, SEMSEG_CLASSES)
    print(format_table(results))
    print(f"wrote {out / 'eval.json'} and {out / 'reconstructions.png'}")
    return 0
