"""The 4M evaluation's outputs: the printed table, ``eval.json``, ``samples.png``, and the run of ``polymodal eval``
for a 4M (arguments in :mod:`polymodal.families.fourm.cli`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from polymodal.config import ConfigError
from polymodal.data.synth.held_out import HELD_OUT_SEED
from polymodal.data.synth.scoring import format_scores
from polymodal.families.fourm.evaluate.settings import EvalSettings
from polymodal.families.fourm.evaluate.tasks import FourMEvaluation, evaluate_fourm
from polymodal.families.fourm.generate.run import load_image_tokenizers, load_model, tokenizer_sources
from polymodal.families.fourm.grid.sheet import write_grid_png


def format_report(report: Mapping[str, Any]) -> str:
    """A table: one line per task metric, model vs baseline and which is better; then the skipped tasks."""
    title = f"4M on {report['num_scenes']} held-out scenes (seed {report['seed']}, {report['image_size']} px)"
    return format_scores(title, report["tasks"], report["skipped"])


def write_evaluation(out: str | Path, evaluation: FourMEvaluation, rows: int = 8) -> tuple[Path, Path]:
    """``eval.json`` and ``samples.png`` (the first ``rows`` scenes) in ``out``."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "eval.json"
    report_path.write_text(json.dumps(evaluation.report, indent=2) + "\n")
    shown = [column.first_rows(rows) for column in evaluation.columns]
    return report_path, write_grid_png(out / "samples.png", shown)


def eval_4m_main(args: argparse.Namespace) -> int:
    """``polymodal eval`` of a 4M (``eval-4m``): print the table, write ``eval.json`` and ``samples.png``."""
    from polymodal.tokenizers.text.wordpiece import load_wordpiece

    seed = HELD_OUT_SEED if args.seed is None else args.seed
    try:
        device = torch.device(args.device)
        model = load_model(args.model, device)
        tokenizer_paths, text_path = tokenizer_sources(args, model)
        text_tokenizer = load_wordpiece(text_path) if text_path else None
        settings = EvalSettings(
            batch_size=args.batch_size,
            baseline_scenes=args.baseline_scenes,
            baseline_seed=args.baseline_seed,
            rgb_scheme=args.rgb_scheme,
            rgb_steps=args.rgb_steps,
            rgb_temperature=args.rgb_temperature,
            rgb_cfg_scale=args.rgb_cfg_scale,
            presence_fraction=args.presence_fraction,
            sample_seed=args.sample_seed,
        )
        image_tokenizers = load_image_tokenizers(tokenizer_paths, device)
        evaluation = evaluate_fourm(
            model, image_tokenizers, text_tokenizer, args.num_scenes, seed, args.image_size, settings
        )
        evaluation.report["model"] = str(args.model)
        report_path, png = write_evaluation(args.out, evaluation, args.rows)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from error
    print(format_report(evaluation.report))
    print(f"wrote {report_path} and {png}")
    return 0
