"""The 4M family's verbs: ``polymodal pretokenize-4m``, and ``polymodal generate`` / ``polymodal eval`` for a 4M run
(the engine's ``generate`` and ``eval`` dispatch here on the family of the run's model; ``eval-4m`` is the old
name of ``eval``). Like every verb module, this one imports no torch at its top level: ``--help`` stays cheap.
"""

from __future__ import annotations

import argparse

from polymodal.commands import lazy_runner, run_command
from polymodal.families.fourm.evaluate.settings import EvalSettings


def pretokenize(argv: list[str]) -> int:
    """``polymodal pretokenize-4m``: a shard tree's image modalities -> tok_<modality> shards + crop settings."""
    run = lazy_runner("polymodal.families.fourm.pretokenize:pretokenize_main")
    return run_command("polymodal pretokenize-4m", pretokenize.__doc__, add_pretokenize_arguments, argv, run)


def generate(argv: list[str]) -> int:
    """``polymodal generate`` of a 4M: chained any-to-any generation -> generations.png + .json."""
    run = lazy_runner("polymodal.families.fourm.generate.run:generate_main")
    return run_command("polymodal generate", generate.__doc__, add_generate_arguments, argv, run)


def evaluate(argv: list[str]) -> int:
    """``polymodal eval`` of a 4M: held-out scenes vs trivial baselines (depth, semseg, caption, caption->rgb)."""
    run = lazy_runner("polymodal.families.fourm.evaluate.report:eval_4m_main")
    return run_command("polymodal eval", evaluate.__doc__, add_eval_arguments, argv, run)


def _tokenizer_argument(text: str) -> tuple[str, str]:
    modality, sep, directory = text.partition("=")
    if not sep or not modality or not directory:
        raise argparse.ArgumentTypeError(f"--tokenizer {text!r} is not MODALITY=DIRECTORY")
    return modality, directory


def add_pretokenize_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``pretokenize-4m`` options to ``parser`` (a sub-command parser or a fresh one)."""
    parser.add_argument("--source", required=True, help="shard tree root holding <modality>/shard-NNNNN.tar")
    parser.add_argument("--out", help="output root (default: --source)")
    parser.add_argument(
        "--tokenizer",
        action="append",
        type=_tokenizer_argument,
        required=True,
        help="MODALITY=DIR: a tokenizer export or checkpoint dir for a source modality folder (repeatable)",
    )
    parser.add_argument("--image-size", type=int, default=64, help="crop resolution fed to the tokenizers")
    parser.add_argument("--n-crops", type=int, default=5, help="crops per sample; row 0 is the centre crop")
    parser.add_argument("--scale", type=float, nargs=2, default=(0.2, 1.0), help="random crop area fraction")
    parser.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), help="random crop aspect range")
    parser.add_argument("--hflip", type=float, default=0.5, help="flip probability of the random crops")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    parser.add_argument("--batch-size", type=int, help="crops per tokenizer forward pass (default 64)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one shard at a time each)")
    parser.add_argument("--device", default="cpu", help="device the tokenizers run on, e.g. cpu or cuda:0")
    parser.add_argument("--cache-dir", help="cache root for the shard index (default: the user cache)")
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a trained 4M: run dir (newest checkpoint), checkpoint, export")
    parser.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="MODALITY=DIR",
        help="image tokenizer of a modality (default: those the run carries in its tokenizers/ folder)",
    )
    parser.add_argument("--text-tokenizer", help="WordPiece tokenizer JSON (default: the one the run carries)")


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--schedule", help="generation schedule YAML (4M's form); or give the inline flags below")
    parser.add_argument("--cond", help="conditioning modalities, comma-separated")
    parser.add_argument("--targets", help="target modalities in generation order, comma-separated")
    parser.add_argument("--schemes", help="maskgit|roar|autoregressive per target (default: by kind)")
    parser.add_argument("--steps", help="decoding steps per target (default 8)")
    parser.add_argument("--token-schedules", help="cosine|linear per target (default cosine)")
    parser.add_argument("--temps", help="temperature per target (default 1)")
    parser.add_argument("--temp-schedules", help="constant|linear|onex:<min_t>:<power> per target")
    parser.add_argument("--cfg-scales", help="classifier-free guidance scale per target (default 1: off)")
    parser.add_argument("--cfg-grow", action="store_true", help="add each finished target to the guidance domains")
    parser.add_argument("--top-k", help="top-k filter: a count, or a fraction of the vocabulary (default 0: off)")
    parser.add_argument("--top-p", help="nucleus filter (default 0: off)")
    parser.add_argument(
        "--data", help="4M shard pattern to read the conditioning inputs (and any target it holds, shown as truth) from"
    )
    parser.add_argument("--caption", help="a caption input, or a prompt ending in [S_1] when caption is a target")
    parser.add_argument("--num-samples", type=int, default=4, help="samples to generate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    parser.add_argument("--device", default="cpu", help="torch device for the model and tokenizers")
    parser.add_argument("--cache-dir", help="cache root for the shard index (default: the user cache)")
    parser.add_argument("--out", required=True, help="directory for generations.png and generations.json")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvalSettings()
    _add_model_arguments(parser)
    parser.add_argument("--num-scenes", type=int, default=64, help="held-out synthetic scenes to evaluate on")
    parser.add_argument("--seed", type=int, help="scene seed (default: the held-out 10000; unlike training's)")
    parser.add_argument("--image-size", type=int, help="scene size (default: the model's rgb pixel resolution)")
    parser.add_argument(
        "--baseline-scenes", type=int, default=defaults.baseline_scenes, help="training-seed scenes the baselines fit"
    )
    parser.add_argument("--baseline-seed", type=int, default=defaults.baseline_seed, help="the training seed")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="scenes per forward pass")
    parser.add_argument(
        "--rgb-scheme", choices=("roar", "maskgit"), default=defaults.rgb_scheme, help="caption->rgb decoding scheme"
    )
    parser.add_argument("--rgb-steps", type=int, default=defaults.rgb_steps, help="caption->rgb decoding steps")
    parser.add_argument(
        "--rgb-temperature", type=float, default=defaults.rgb_temperature, help="caption->rgb sampling temperature"
    )
    parser.add_argument(
        "--rgb-cfg-scale", type=float, default=defaults.rgb_cfg_scale, help="caption->rgb guidance scale (1: off)"
    )
    parser.add_argument(
        "--presence-fraction",
        type=float,
        default=defaults.presence_fraction,
        help="share of the image a class must cover to count as drawn",
    )
    parser.add_argument("--sample-seed", type=int, default=defaults.sample_seed, help="seed of the sampling draws")
    parser.add_argument("--rows", type=int, default=8, help="scenes shown in samples.png")
    parser.add_argument("--device", default="cpu", help="torch device for the model and tokenizers")
    parser.add_argument("--out", required=True, help="directory for eval.json and samples.png")
