import json
import math

import pytest

from polymodal.train.plots import VAL_BELOW_TRAIN_NOTE, _ema, loss_figure, plot_loss_curves, val_below_train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 10_000 < len(data) < 2_000_000


def test_plot_train_and_val_with_nulls(tmp_path):
    records = [
        {"step": s, "split": "train", "time": 0.0, "loss": 8 * math.exp(-s / 60) + 0.5, "lr": 1e-3}
        for s in range(1, 301)
    ]
    records[40]["loss"] = None  # a non-finite loss, written as null
    records += [
        {"step": s, "split": "val", "time": 0.0, "loss": 8 * math.exp(-s / 60) + 0.7} for s in range(50, 301, 50)
    ]
    metrics = _write_metrics(tmp_path / "metrics.jsonl", records)
    out = plot_loss_curves(metrics, tmp_path / "plots" / "loss.png")
    assert out == tmp_path / "plots" / "loss.png"
    _assert_png(out)


def test_plot_train_only(tmp_path):
    metrics = _write_metrics(
        tmp_path / "metrics.jsonl", [{"step": s, "split": "train", "loss": 3.0 - s / 100} for s in range(1, 11)]
    )
    _assert_png(plot_loss_curves(metrics, tmp_path / "loss.png"))


def test_empty_or_lossless_file_raises(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no finite 'loss'"):
        plot_loss_curves(empty, tmp_path / "a.png")
    nulls = _write_metrics(tmp_path / "nulls.jsonl", [{"step": 1, "split": "train", "loss": None, "lr": 0.1}])
    with pytest.raises(ValueError, match="nulls.jsonl"):
        plot_loss_curves(nulls, tmp_path / "b.png")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


def test_ema_is_bias_corrected_and_smooth():
    assert _ema([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]  # short curves are left raw
    values = [1.0, 3.0] * 100
    smoothed = _ema(values)
    decay = 1 - 1 / 8
    expected, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = decay * average + (1 - decay) * value
        expected.append(average / (1 - decay**i))
    assert smoothed == pytest.approx(expected)
    assert smoothed[0] == 1.0 and max(smoothed[50:]) - min(smoothed[50:]) < 0.5


def _curves(val_losses):
    train = ([20, 40, 60, 80], [4.0, 3.0, 2.5, 2.2])
    return {"train": train, "val": ([40, 80], val_losses)}


def test_val_is_compared_with_the_train_point_at_or_before_its_step():
    assert val_below_train(_curves([2.9, 2.3]))  # 2.9 < 3.0 at step 40
    assert not val_below_train(_curves([3.1, 2.3]))
    assert not val_below_train({"train": ([20], [1.0]), "val": ([10], [0.5])})  # no train point yet
    assert not val_below_train({"val": ([10], [0.5])})


def test_the_figure_says_why_when_validation_sits_below_training(tmp_path):
    below = loss_figure(_curves([2.9, 2.1]), "run")
    assert [text.get_text() for text in below.texts] == [VAL_BELOW_TRAIN_NOTE.format(window=20)]
    assert (
        "the mean of the 20 steps up to it" in below.texts[0].get_text() and "centre crop" in below.texts[0].get_text()
    )
    assert loss_figure(_curves([3.1, 2.3]), "run").texts == []
    metrics = _write_metrics(
        tmp_path / "metrics.jsonl",
        [{"step": s, "split": "train", "loss": 5.0 - s / 100} for s in range(10, 201, 10)]
        + [{"step": 200, "split": "val", "loss": 2.0}],
    )
    _assert_png(plot_loss_curves(metrics, tmp_path / "loss.png"))
