"""Loss-curve PNGs from a run's metrics.jsonl (object-oriented matplotlib: no pyplot global state).

Validation loss often sits below training loss, and the figure then says why (:data:`VAL_BELOW_TRAIN_NOTE`): the
:class:`~polymodal.train.trainer.Trainer` does not measure the two alike.

* Samples: training batches go through the data's training transform (random resized crops, and flips unless the
  data turns them off, for image data; for 4M a random pre-tokenized crop row, random crops and flips, and a random
  caption phrasing), validation batches through the evaluation transform (the centre crop, the first caption) on
  fixed batches.
* Weights: a train point is the mean of the losses of its logging window (``log_every`` steps), each computed before
  that step's update; a validation point uses the weights after the step.
* Mode: training runs in train mode, validation in eval mode (dropout and drop-path off, where a model has them).

Measured on the tiny 4M (``configs/fourm/tiny.yaml`` on 1,000 scenes, step 300 of a shortened run): train 3.37,
validation 2.77. The same weights score 2.77 on *training* scenes read with the evaluation transform and 3.37 on
validation scenes read with the training one, so the crops make the whole gap (depth tokens 2.42 vs 1.17 nats, det
4.29 vs 3.30, captions alike); the logging window's lag adds 0.07 (3.30 on fresh training batches after the step),
and eval mode changes nothing, as the tiny 4M has no dropout or drop-path.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from polymodal.train.logging import read_metrics

# Switch to a log y-axis when the largest loss is this many times the smallest.
_LOG_SCALE_RATIO = 10.0
VAL_BELOW_TRAIN_NOTE = (
    "Why validation is below training: training batches are augmented (random crops, flips where on; 4M: a random "
    "crop of each scene),\nvalidation uses the centre crop, an easier task; and a train point is the mean of the "
    "{window} steps up to it, each measured before its update (older weights) in train mode."
)

Curves = dict[str, tuple[list[int], list[float]]]


def read_loss_curves(metrics_jsonl: Path) -> Curves:
    """``{split: (steps, losses)}`` of a metrics.jsonl, ``null`` (non-finite) losses left out."""
    curves: Curves = {}
    for record in read_metrics(metrics_jsonl):
        loss = record.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            steps, losses = curves.setdefault(record["split"], ([], []))
            steps.append(record["step"])
            losses.append(float(loss))
    return curves


def val_below_train(curves: Curves) -> bool:
    """Whether a validation point lies below the train point logged at its step (or the last one before it)."""
    if "train" not in curves:
        return False
    train_steps, train_losses = curves["train"]
    for split, (steps, losses) in curves.items():
        if split == "train":
            continue
        for step, loss in zip(steps, losses, strict=True):
            latest = bisect.bisect_right(train_steps, step) - 1
            if latest >= 0 and loss < train_losses[latest]:
                return True
    return False


def _log_window(train_steps: list[int]) -> int:
    """Steps per train point: the gap between the first two (``log_every``), or the first point's step."""
    return train_steps[1] - train_steps[0] if len(train_steps) > 1 else train_steps[0]


def loss_figure(curves: Curves, title: str) -> Figure:
    """Train loss (raw, faint, plus an EMA-smoothed line), every other split's loss (markers), and the note on
    why validation is lower when it is."""
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
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    bottom = 0.0
    if val_below_train(curves):
        note = VAL_BELOW_TRAIN_NOTE.format(window=_log_window(curves["train"][0]))
        figure.text(0.01, 0.01, note, fontsize=7, color="0.3", verticalalignment="bottom")
        bottom = 0.06
    figure.tight_layout(rect=(0, bottom, 1, 1))
    return figure


def plot_loss_curves(metrics_jsonl: Path, out_png: Path) -> Path:
    """Write :func:`loss_figure` of ``metrics_jsonl`` to ``out_png``. Raises ValueError if the file holds no finite
    loss at all."""
    metrics_jsonl, out_png = Path(metrics_jsonl), Path(out_png)
    curves = read_loss_curves(metrics_jsonl)
    if not curves:
        raise ValueError(f"{metrics_jsonl} holds no finite 'loss' values to plot")
    figure = loss_figure(curves, f"Loss: {metrics_jsonl.parent.name or metrics_jsonl.name}")
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
