"""Loss-curve PNGs from a run's metrics.jsonl (object-oriented matplotlib: no pyplot global state)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from polymodal.train.logging import read_metrics

# Switch to a log y-axis when the largest loss is this many times the smallest.
_LOG_SCALE_RATIO = 10.0


def plot_loss_curves(metrics_jsonl: Path, out_png: Path) -> Path:
    """Plot train loss (raw, faint, plus an EMA-smoothed line) and every other split's loss (markers).

    ``null`` (non-finite) losses are left out. Raises ValueError if the file holds no finite loss at all.
    """
    metrics_jsonl, out_png = Path(metrics_jsonl), Path(out_png)
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for record in read_metrics(metrics_jsonl):
        loss = record.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            steps, losses = curves.setdefault(record["split"], ([], []))
            steps.append(record["step"])
            losses.append(float(loss))
    if not curves:
        raise ValueError(f"{metrics_jsonl} holds no finite 'loss' values to plot")

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if "train" in curves:
        steps, losses = curves["train"]
        axes.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=1, label="train (raw)")
        axes.plot(steps, _ema(losses), color="tab:blue", linewidth=2, label="train (EMA)")
    eval_colors = iter(["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"])
    for split, (steps, losses) in curves.items():
        if split != "train":
            axes.plot(steps, losses, marker="o", linestyle="--", color=next(eval_colors, None), label=split)

    all_losses = [loss for _, losses in curves.values() for loss in losses]
    if min(all_losses) > 0 and max(all_losses) / min(all_losses) > _LOG_SCALE_RATIO:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(f"Loss: {metrics_jsonl.parent.name or metrics_jsonl.name}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png)
    return out_png


def _ema(values: list[float]) -> list[float]:
    """Bias-corrected exponential moving average spanning ~1/25 of the curve (no lag bias at the start)."""
    decay = 1.0 - 1.0 / max(1.0, len(values) / 25)
    smoothed, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = decay * average + (1 - decay) * value
        smoothed.append(average / (1 - decay**i))
    return smoothed
