"""``polymodal lumina pretokenize`` and ``polymodal lumina concat-records``: Lumina-mGPT's two pre-tokenization
commands with its flags (``--splits --rank --in_filename --out_dir --target_size``; ``--sub_record_dir
--save_path``); ``polymodal lumina train-text``: a BPE for them, trained on a conversation file's turns; and
``polymodal generate`` / ``polymodal eval`` for a run of this family (the engine's ``generate`` and ``eval``
dispatch here on the family of the run's model). Like every verb module, this one imports no torch at its top
level: ``--help`` stays cheap."""

from __future__ import annotations

import argparse
from pathlib import Path

from polymodal.commands import DefaultsHelpFormatter, lazy_runner, run_command
from polymodal.families.lumina.evaluate.settings import LuminaEvalSettings
from polymodal.families.lumina.generate.settings import CAPTION, SamplingSettings


def main(argv: list[str]) -> int:
    return run_command("polymodal lumina", __doc__, add_arguments, argv)


def generate(argv: list[str]) -> int:
    """``polymodal generate`` of an image-text model: images from prompts, answers about images -> a PNG + JSON."""
    run = lazy_runner("polymodal.families.lumina.generate.run:generate_main")
    return run_command("polymodal generate", generate.__doc__, add_generate_arguments, argv, run)


def evaluate(argv: list[str]) -> int:
    """``polymodal eval`` of an image-text model: captioning and text-to-image on held-out scenes vs baselines."""
    run = lazy_runner("polymodal.families.lumina.evaluate.report:eval_lumina_main")
    return run_command("polymodal eval", evaluate.__doc__, add_eval_arguments, argv, run)


def _size(text: str) -> tuple[int, int]:
    """``"WxH"`` in pixels -> ``(height, width)``."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT in pixels, e.g. 512x512")
    return int(height), int(width)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SamplingSettings()
    parser.add_argument("--model", required=True, help="a trained run dir (newest checkpoint), checkpoint or export")
    parser.add_argument("--prompt", action="append", default=[], help="text to draw an image of (repeatable)")
    parser.add_argument("--prompts-file", help="a file of prompts, one per line")
    parser.add_argument("--image", action="append", default=[], help="an image file to answer --question about")
    parser.add_argument("--question", default=CAPTION, help="asked about each --image (one <|image|> placeholder)")
    parser.add_argument(
        "--size",
        type=_size,
        help="WxH pixels of the images drawn: a bucket of the run's target size or sides that are multiples of "
        "2x the image tokenizer's downsampling (default: the squarest bucket)",
    )
    parser.add_argument("--target-size", type=int, help="bucket target size (default: the run's records')")
    parser.add_argument(
        "--cfg-scale", type=float, default=defaults.cfg_scale, help="classifier-free guidance of images (1: off)"
    )
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="of every draw (0: greedy)")
    parser.add_argument("--image-top-k", type=int, default=defaults.image_top_k, help="among image codes (0: off)")
    parser.add_argument("--text-top-k", type=int, default=defaults.text_top_k, help="among text tokens (0: off)")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus filter (0: off)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest answer about an image")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt and per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (and of the crops of --image)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--out", required=True, help="directory for generations.png and generations.json")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = LuminaEvalSettings()
    judge, drawing = defaults.judge, defaults.drawing
    parser.add_argument("--model", required=True, help="a trained run dir (newest checkpoint), checkpoint or export")
    parser.add_argument("--num-scenes", type=int, default=64, help="held-out synthetic scenes to evaluate on")
    parser.add_argument("--seed", type=int, help="scene seed (default: the held-out 10000; unlike training's)")
    parser.add_argument("--target-size", type=int, help="bucket target size (default: the run's records')")
    parser.add_argument(
        "--baseline-scenes", type=int, default=defaults.baseline_scenes, help="training-seed scenes of the baseline"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="scenes per batch")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="longest caption")
    parser.add_argument(
        "--caption-temperature", type=float, default=defaults.captioning.temperature, help="of captions (0: greedy)"
    )
    parser.add_argument(
        "--cfg-scale", type=float, default=drawing.cfg_scale, help="classifier-free guidance of images (1: off)"
    )
    parser.add_argument("--temperature", type=float, default=drawing.temperature, help="of the images drawn")
    parser.add_argument("--image-top-k", type=int, default=drawing.image_top_k, help="among image codes (0: off)")
    parser.add_argument("--judge-scenes", type=int, default=judge.num_scenes, help="renders the judge trains on")
    parser.add_argument("--judge-steps", type=int, default=judge.steps, help="training steps of the judge")
    parser.add_argument("--judge-cache", help="directory of trained judges (default: <user cache>/judges)")
    parser.add_argument("--sample-seed", type=int, default=defaults.sample_seed, help="seed of the sampling draws")
    parser.add_argument("--rows", type=int, default=8, help="scenes shown in samples.png")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--out", required=True, help="directory for eval.json and samples.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="lumina", required=True)
    pretokenize = verbs.add_parser(
        "pretokenize",
        formatter_class=DefaultsHelpFormatter,
        help="one rank's share of a conversation file -> token shards, a record and an error report",
    )
    add_pretokenize_arguments(pretokenize)
    pretokenize.set_defaults(run=lazy_runner("polymodal.families.lumina.pretokenize:pretokenize_main"))
    concat = verbs.add_parser(
        "concat-records",
        formatter_class=DefaultsHelpFormatter,
        help="merge the ranks' records into one record file, checking that all are there, alike and disjoint",
    )
    concat.add_argument("--sub_record_dir", type=Path, required=True, help="the --out_dir of the ranks")
    concat.add_argument("--save_path", type=Path, required=True, help="record file to write, e.g. <dir>/record.json")
    concat.set_defaults(run=_concat)
    text = verbs.add_parser(
        "train-text",
        formatter_class=DefaultsHelpFormatter,
        help="a byte-level BPE with the family's special tokens, trained on the turns of a conversation file",
    )
    text.add_argument("--in_filename", type=Path, required=True, help="conversations: a JSON list or JSONL file")
    text.add_argument("--output", type=Path, required=True, help="tokenizer JSON to write")
    text.add_argument("--vocab-size", type=int, default=1024, help="tokens in the vocabulary, specials included")
    text.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences of a learnt piece")
    text.set_defaults(run=_train_text)


def add_pretokenize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in_filename", type=Path, required=True, help="conversations: a JSON list or JSONL file")
    parser.add_argument("--out_dir", type=Path, required=True, help="where every rank writes (shared by the ranks)")
    parser.add_argument("--splits", type=int, default=1, help="number of ranks; item i goes to rank i mod splits")
    parser.add_argument("--rank", type=int, default=0, help="this process's rank, 0 .. splits-1")
    parser.add_argument("--target_size", type=int, default=512, help="image side the resolution buckets are made for")
    parser.add_argument("--text_tokenizer", type=Path, required=True, help="byte-level BPE tokenizer JSON")
    parser.add_argument("--image_tokenizer", type=Path, required=True, help="rgb image tokenizer (run/export)")
    parser.add_argument(
        "--text_vocab_size", type=int, help="first image-code id (default: the text tokenizer's vocabulary size)"
    )
    parser.add_argument("--patch_size", type=int, help="bucket grid in pixels (default: 2 x tokenizer downsampling)")
    parser.add_argument("--max_tokens", type=int, default=4096, help="longer sequences are rejected, never truncated")
    parser.add_argument("--max_pixels", type=int, default=64 * 1024 * 1024, help="larger images are rejected")
    parser.add_argument("--min_image_side", type=int, default=8, help="images with a shorter side are rejected")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crop offsets")
    parser.add_argument("--chunk_size", type=int, default=256, help="items per shard (the unit of resuming)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per image-tokenizer forward pass")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding and resizing images")
    parser.add_argument("--device", default="cpu", help="device of the image tokenizer, e.g. cpu or cuda:0")


def _train_text(args: argparse.Namespace) -> int:
    from polymodal.config import ConfigError
    from polymodal.families.lumina.conversations import conversation_texts
    from polymodal.tokenizers.text.bpe import save_tokenizer, train_bpe

    texts = list(conversation_texts(args.in_filename))
    if not texts:
        raise ConfigError(f"{args.in_filename} holds no usable conversation to learn from")
    try:
        tokenizer = train_bpe(texts, args.vocab_size, args.min_frequency)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    save_tokenizer(tokenizer, args.output)
    print(f"trained BPE tokenizer: vocab {tokenizer.get_vocab_size()} on {len(texts):,} turn texts -> {args.output}")
    return 0


def _concat(args: argparse.Namespace) -> int:
    from polymodal.config import ConfigError
    from polymodal.families.lumina.records import RecordError, concat_records

    try:
        merged = concat_records(args.sub_record_dir, args.save_path)
    except RecordError as error:
        raise ConfigError(str(error)) from error
    errors = ", ".join(f"{reason} {count}" for reason, count in merged["errors"].items())
    print(
        f"{args.save_path}: {merged['items']:,} items, {merged['tokens']:,} tokens in {len(merged['shards'])} shards"
        + (f"; left out: {errors}" if errors else "")
    )
    return 0
