"""MFU of the trainer `polymodal train` runs, on this machine: the d512 LLM and the tiny 4M, fp32 and bf16.

Each case builds ``Trainer(load_config(...))`` from a shipped config with overrides and calls ``fit()`` — the code
path of ``polymodal train`` — for ``--warmup`` + ``--steps`` steps, logging every step. It prints the median of the
measured steps' logged ``mfu``, ``samples_per_s`` and ``tokens_per_s``, the achieved model FLOP/s they imply (the
models' analytic counts) and the peak MFU divides by: on CPU a large-matmul throughput measured once per dtype and
cached (``polymodal/train/mfu.py``). CPU MFU is a regression number for this box only, not comparable to GPU MFU.

* ``llm``: ``configs/llm/tiny.yaml`` at dim 512, 8 layers, 8 heads (no GQA), T 256, batch 8, vocab 8192, untied head,
  on its stdlib-docstring data (the BPE tokenizer is trained once and cached under ``--cache-dir``).
* ``fourm``: ``configs/fourm/tiny.yaml`` as shipped (128 wide, 2+2 layers, 64+128 tokens, batch 16) on a tiny
  pre-tokenized synthetic world built in a temporary directory (256 scenes; untrained image tokenizers give valid
  codes, which is all a step needs).

With ``--procs N`` every case runs as ``torchrun`` with N data-parallel (DDP) ranks of ``--threads`` threads each
and the same global batch (each rank takes 1/N of it); the trainer's MFU then divides by N times one rank's peak.
It answers whether a small model uses a CPU's cores better as processes (no thread waits for another inside an op)
than as threads (one optimizer step, no all-reduce); on the 2-core box of benchmarks/README.md, threads won.

    python benchmarks/mfu.py                           # 4 cases, ~2 minutes on 2 CPU cores
    python benchmarks/mfu.py --cases llm-fp32 --steps 5
    python benchmarks/mfu.py --procs 2 --threads 1     # 2 DDP processes x 1 thread
    python benchmarks/mfu.py --cases fourm-fp32 --override constants.batch_size=64   # overrides for every case
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig
from timing import measuring, parse_with_threads

from polymodal.config import load_config
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.data.synth.writers import write_shards
from polymodal.families.fourm.pretokenize import CropOptions, pretokenize_4m
from polymodal.files import cache_root
from polymodal.tokenizers.image.quantizers import VectorQuantizer
from polymodal.tokenizers.image.tokenizer import build_image_tokenizer
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import train_wordpiece
from polymodal.train.mfu import device_peak_flops
from polymodal.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")
MODELS = ("llm", "fourm")
CASES = tuple(f"{model}-{precision}" for model in MODELS for precision in PRECISIONS)
FOURM_CODEBOOKS = {"rgb": 1000, "depth": 256, "normal": 256, "semseg": 128}  # configs/fourm/data/synth_tiny.yaml


@dataclass(frozen=True)
class CaseResult:
    case: str
    batch_size: int  # the global batch
    peak_flops: float
    mfu: float
    samples_per_s: float
    tokens_per_s: float | None
    wall_s: float


def run_settings(output_dir: Path, precision: str, warmup: int, steps: int) -> list[str]:
    """Every step logged; validation and the checkpoint only at the end (``fit`` always does both at the last
    step); a one-step lr warm-up; no remote logging."""
    total = warmup + steps
    return [
        "constants.warmup_steps=1",
        f"experiment.output_dir={output_dir}",
        f"experiment.precision={precision}",
        f"experiment.total_steps={total}",
        "experiment.log_every=1",
        f"experiment.eval_every={total}",
        "experiment.eval_steps=1",
        f"experiment.ckpt_every={total}",
        "experiment.keep_last=1",
        "experiment.tensorboard=false",
        "experiment.wandb.enabled=false",
        "experiment.device=cpu",
    ]


@dataclass(frozen=True)
class CaseRun:
    """A shipped config and the command-line overrides of one case."""

    config: Path
    overrides: list[str]

    def per_rank(self, procs: int) -> list[str]:
        """The overrides with the case's global batch (``constants.batch_size``) split over ``procs`` ranks."""
        global_batch = load_config(self.config, self.overrides).constants.batch_size
        if global_batch % procs:
            raise ValueError(f"the global batch {global_batch} does not split over {procs} processes")
        return [*self.overrides, f"constants.batch_size={global_batch // procs}"]


def llm_case(output_dir: Path, cache_dir: Path, precision: str, warmup: int, steps: int) -> CaseRun:
    model = [
        "constants.dim=512",
        "constants.depth=8",
        "constants.num_heads=8",
        "constants.num_kv_heads=8",
        "constants.seq_len=256",
        "constants.batch_size=8",
        "constants.vocab_size=8192",
        "constants.multiple_of=256",
        "constants.tie_embeddings=false",
        f"constants.cache_dir={cache_dir}",
    ]
    return CaseRun(REPO / "configs/llm/tiny.yaml", model + run_settings(output_dir, precision, warmup, steps))


def build_fourm_world(root: Path) -> dict[str, str]:
    """256 synthetic scenes in 4 shards of 64 (3 train, 1 val: batches up to 64), pre-tokenized by untrained tiny image
    tokenizers, and a WordPiece tokenizer of their captions: the ``constants`` overrides that point
    configs/fourm/tiny.yaml at them."""
    scenes = root / "scenes"
    modalities = (*FOURM_CODEBOOKS, "caption", "det")
    write_shards(scenes, num_samples=256, samples_per_shard=64, seed=3, size=64, modalities=modalities)
    tokenizers = {}
    for modality, codebook_size in FOURM_CODEBOOKS.items():
        torch.manual_seed(codebook_size)
        tokenizers[modality] = build_image_tokenizer(
            modality,
            VectorQuantizer(dim=8, codebook_size=codebook_size),
            downsample=8,
            channels=[8, 8, 8, 8],
            num_classes=5 if modality == "semseg" else None,
        ).eval()
    pretokenize_4m(scenes, tokenizers, options=CropOptions(n_crops=1, image_size=64, seed=1), cache_dir=root)
    text = train_wordpiece(synthetic_scene_texts(40), vocab_size=4800)
    return {
        "constants.scenes": str(scenes),
        "constants.text_tokenizer": str(save_tokenizer(text, root / "wordpiece.json")),
        "constants.text_vocab_size": str(text.get_vocab_size()),
        "constants.num_workers": "0",
        "data.cache_dir": str(root / "cache"),
    }


def fourm_case(output_dir: Path, world: dict[str, str], precision: str, warmup: int, steps: int) -> CaseRun:
    world_settings = [f"{key}={value}" for key, value in world.items()]
    return CaseRun(
        REPO / "configs/fourm/tiny.yaml", world_settings + run_settings(output_dir, precision, warmup, steps)
    )


def measure(case: str, run: CaseRun, warmup: int, procs: int, threads: int | None) -> CaseResult:
    """Train the case, in this process or as ``procs`` torchrun ranks; the medians of what the trainer logged for
    the steps after ``warmup``."""
    overrides = run.per_rank(procs)
    config = load_config(run.config, overrides)
    started = time.perf_counter()
    if procs == 1:
        trainer = Trainer(config)
        trainer.fit()
        peak_flops = trainer.exp.peak_flops or device_peak_flops(trainer.env.device, trainer.dtype)  # cached
    else:
        launch_ranks(run.config, overrides, procs, threads)
        peak_flops = procs * rank_peak_flops(config)
    wall_s = time.perf_counter() - started
    metrics = Path(config.experiment.output_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    measured = [row for row in rows if row["split"] == "train" and row["step"] > warmup]
    tokens = [row["tokens_per_s"] for row in measured if "tokens_per_s" in row]
    return CaseResult(
        case=case,
        batch_size=config.constants.batch_size * procs,
        peak_flops=peak_flops,
        mfu=statistics.median(row["mfu"] for row in measured),
        samples_per_s=statistics.median(row["samples_per_s"] for row in measured),
        tokens_per_s=statistics.median(tokens) if tokens else None,
        wall_s=wall_s,
    )


def launch_ranks(config: Path, overrides: list[str], procs: int, threads: int | None) -> None:
    """``polymodal train`` under ``torchrun --standalone`` with ``procs`` DDP ranks of ``threads`` threads each."""
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads or 1)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
        "-m", "polymodal", "train", "--config", str(config), *overrides,
        "experiment.distributed.strategy=ddp",
    ]  # fmt: skip
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"torchrun failed ({finished.returncode}):\n{finished.stderr[-4000:]}")


def rank_peak_flops(config: DictConfig) -> float:
    """One rank's peak: the probe the ranks cached, read under this process's thread count (set to theirs)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[config.experiment.precision]
    return device_peak_flops(torch.device(config.experiment.device), dtype)


def report(result: CaseResult) -> str:
    tokens = f"{result.tokens_per_s:10.0f}" if result.tokens_per_s is not None else f"{'-':>10}"
    rates = f"{result.mfu * result.peak_flops / 1e9:12.1f}{result.peak_flops / 1e9:12.1f}{result.mfu:8.3f}"
    return f"  {result.case:12}{result.batch_size:6d}{rates}{result.samples_per_s:10.2f}{tokens}{result.wall_s:8.0f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--steps", type=int, default=2, help="measured steps per case (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    parser.add_argument("--cache-dir", type=Path, default=None, help="the LLM's tokenizer and token cache")
    parser.add_argument(
        "--procs", type=int, default=1, help="data-parallel processes per case (torchrun, DDP, --threads each)"
    )
    parser.add_argument(
        "--override",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every case, after its own (e.g. constants.batch_size=64); repeatable",
    )
    args = parse_with_threads(parser, argv, positive=["steps", "warmup", "procs"])
    if args.procs > 1 and args.threads is None:
        args.threads = 1  # the ranks' thread count, under which this process reads their cached peak
    return args


def main(argv: Sequence[str] | None = None) -> list[CaseResult]:
    args = parse_args(argv)
    with measuring(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> list[CaseResult]:
    results = []
    columns = f"{'batch':>6}{'GFLOP/s':>12}{'peak GF/s':>12}{'MFU':>8}{'samples/s':>10}{'tok/s':>10}{'wall s':>8}"
    print(f"  {'case':12}{columns}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache_dir = args.cache_dir or cache_root()
        world: dict[str, str] | None = None
        for case in args.cases:
            model, precision = case.split("-")
            output_dir = work / case
            if model == "llm":
                run_case = llm_case(output_dir, cache_dir, precision, args.warmup, args.steps)
            else:
                world = world or build_fourm_world(work / "fourm_world")
                run_case = fourm_case(output_dir, world, precision, args.warmup, args.steps)
            run_case = replace(run_case, overrides=[*run_case.overrides, *args.overrides])
            results.append(measure(case, run_case, args.warmup, args.procs, args.threads))
            print(report(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
