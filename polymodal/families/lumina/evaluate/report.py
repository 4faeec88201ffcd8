"""The outputs of ``polymodal eval`` for the image–text family (arguments in :mod:`polymodal.families.lumina.cli`):
the printed table, ``eval.json`` and ``samples.png`` — a row per scene: the scene with the model's caption of it,
the scene through the image tokenizer (the ceiling), and the image the model drew from the scene's caption."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polymodal.config import ConfigError
from polymodal.data.synth.held_out import HELD_OUT_SEED
from polymodal.data.synth.judge import judge_for
from polymodal.data.synth.judge_settings import JudgeSettings
from polymodal.data.synth.scoring import format_scores
from polymodal.families.lumina.api import LuminaRun
from polymodal.families.lumina.evaluate.settings import LuminaEvalSettings
from polymodal.families.lumina.evaluate.tasks import LuminaEvaluation, as_images, evaluate_lumina
from polymodal.families.lumina.generate.grid import write_sheet
from polymodal.families.lumina.generate.settings import SamplingSettings
from polymodal.files import atomic_output
from polymodal.runs import load_run


def format_report(report: Mapping[str, Any]) -> str:
    """The table of both tasks, the judge's scores on the real images and the share of well-formed blocks."""
    height, width = report["image_size"]
    title = f"image-text model on {report['num_scenes']} held-out scenes (seed {report['seed']}, {width}x{height} px)"
    judge = ", ".join(f"{name} {value:.4f}" for name, value in report["judge_on_real_images"].items())
    return "\n".join(
        [
            format_scores(title, report["tasks"], report["skipped"]),
            f"  judge on the real images: {judge}",
            f"  well-formed image blocks: {report['well_formed_image_blocks']:.1%}",
        ]
    )


def write_evaluation(out: str | Path, evaluation: LuminaEvaluation, rows: int = 8) -> tuple[Path, Path]:
    """``eval.json`` and ``samples.png`` (the first ``rows`` scenes) in ``out``."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    out = Path(out)
    with atomic_output(out / "eval.json") as staged:
        staged.write_text(json.dumps(evaluation.report, indent=2) + "\n")
    scenes, predictions = evaluation.scenes, evaluation.predictions
    shown = range(min(rows, len(scenes.captions)))
    real, through, drawn = (
        as_images(pixels[: len(shown)]) for pixels in (scenes.rgb, predictions.reconstructed, predictions.drawn)
    )
    images, texts = [], []
    for row in shown:
        images += [real[row], through[row], drawn[row]]
        texts += [
            f"model: {predictions.captions[row]}",
            "through the image tokenizer",
            f"drawn: {scenes.captions[row]}",
        ]
    return out / "eval.json", write_sheet(out / "samples.png", images, texts, 3)


def settings_of(args: argparse.Namespace, image_side: int) -> LuminaEvalSettings:
    return LuminaEvalSettings(
        batch_size=args.batch_size,
        baseline_scenes=args.baseline_scenes,
        max_new_tokens=args.max_new_tokens,
        captioning=SamplingSettings(temperature=args.caption_temperature),
        drawing=SamplingSettings(args.temperature, args.image_top_k, cfg_scale=args.cfg_scale),
        judge=JudgeSettings(size=image_side, num_scenes=args.judge_scenes, steps=args.judge_steps),
        sample_seed=args.sample_seed,
    )


def eval_lumina_main(args: argparse.Namespace) -> int:
    """``polymodal eval`` of an image-text run: print the table, write ``eval.json`` and ``samples.png``."""
    seed = HELD_OUT_SEED if args.seed is None else args.seed
    try:
        run = load_run(args.model, args.device)
        if not isinstance(run, LuminaRun):
            raise ValueError(f"{args.model} is not a model of the image-text family")
        height, width = run.image_sizes(args.target_size).default()
        settings = settings_of(args, max(height, width))
        judge = judge_for(settings.judge, args.judge_cache).to(run.device)
        evaluation = evaluate_lumina(run, judge, args.num_scenes, seed, settings, args.target_size)
        evaluation.report["model"] = str(args.model)
        report_path, png = write_evaluation(args.out, evaluation, args.rows)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from error
    print(format_report(evaluation.report))
    print(f"wrote {report_path} and {png}")
    return 0
