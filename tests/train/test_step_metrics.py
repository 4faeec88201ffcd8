import pytest
import torch

from polymodal.train.mfu import mfu
from polymodal.train.step_metrics import StepWindow

CPU = torch.device("cpu")


def step(loss, lr, samples, flops, wait, counting):
    return {
        "loss": torch.tensor(loss),
        "lr": lr,
        "samples": samples,
        "flops": flops,
        "data_wait_s": wait,
        "flop_counting_s": counting,
    }


def test_summary_averages_values_over_steps_and_rates_over_the_time_left_after_flop_counting():
    window = StepWindow(CPU, dp_world=1, world_size=1, peak_flops=1e12, tokens_per_sample=16)
    window.add(step(2.0, 1e-3, 8.0, 4e9, 0.01, 0.5))
    window.add(step(4.0, 3e-3, 8.0, 4e9, 0.03, 0.0))
    window.started -= 10.0  # as if the two steps took ten seconds (plus the instant the test takes)
    summary = window.summary(skipped_steps=1)
    elapsed = 10.0 - 0.5
    assert summary["loss"] == pytest.approx(3.0)
    assert summary["lr"] == pytest.approx(2e-3)
    assert summary["samples_per_s"] == pytest.approx(16 / elapsed, rel=1e-2)
    assert summary["tokens_per_s"] == pytest.approx(16 * 16 / elapsed, rel=1e-2)
    assert summary["data_wait_fraction"] == pytest.approx(0.04 / elapsed, rel=1e-2)
    assert summary["mfu"] == pytest.approx(mfu(8e9, elapsed, 1e12, num_devices=1), rel=1e-2)
    assert summary["skipped_steps"] == 1.0 and summary["peak_memory_gb"] > 0


def test_no_mfu_without_flops_no_tokens_for_non_token_data_and_reset_starts_afresh():
    window = StepWindow(CPU, dp_world=1, world_size=1, peak_flops=1e12, tokens_per_sample=None)
    window.add(step(2.0, 1e-3, 8.0, 0.0, 0.0, 0.0))
    summary = window.summary(skipped_steps=0)
    assert "mfu" not in summary and "tokens_per_s" not in summary
    window.reset()
    assert window.steps == 0 and not window.sums
