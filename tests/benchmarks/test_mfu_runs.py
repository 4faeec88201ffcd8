"""Smoke tests of benchmarks/mfu.py: the tiny 4M case trains through the trainer, in this process and as two DDP
processes, and prints its logged MFU; bad arguments are refused."""

import pytest
import torch

from polymodal.config.errors import ConfigError

BENCHMARK = "mfu"


@pytest.mark.usefixtures("restore_threads")
def test_fourm_case_prints_the_logged_mfu(benchmark, capsys):
    (result,) = benchmark.main(["--cases", "fourm-fp32", "--steps", "1", "--warmup", "1", "--threads", "1"])
    output = capsys.readouterr().out
    assert "fourm-fp32" in output and "MFU" in output
    assert 0 < result.mfu < 1 and result.samples_per_s > 0 and result.tokens_per_s > 0  # 4M's data is tokens


@pytest.mark.usefixtures("restore_threads")
def test_overrides_reach_every_case_and_the_batch_is_reported(benchmark, capsys):
    argv = ["--cases", "fourm-fp32", "--steps", "1", "--warmup", "1", "--threads", "1"]
    argv += ["--override", "constants.batch_size=8"]
    (result,) = benchmark.main(argv)
    assert result.batch_size == 8
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert table[0][:2] == ["case", "batch"] and table[-1][:2] == ["fourm-fp32", "8"]


def test_a_misspelt_override_is_refused(benchmark):
    with pytest.raises(ConfigError, match="did you mean 'constants.batch_size'"):
        benchmark.main(["--cases", "fourm-fp32", "--override", "constants.batch_sise=8"])


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--warmup", "0"], ["--procs", "0"], ["--cases", "llm-fp16"]])
def test_bad_arguments_are_rejected(benchmark, argv, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert "error" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_threads")
def test_fourm_case_runs_as_two_ddp_processes(benchmark, capsys):
    (result,) = benchmark.main(["--cases", "fourm-fp32", "--steps", "1", "--warmup", "1", "--procs", "2"])
    assert "fourm-fp32" in capsys.readouterr().out
    torch.set_num_threads(1)  # the ranks' thread count: their cached peak
    one_rank_peak = benchmark.device_peak_flops(torch.device("cpu"), torch.float32)
    assert result.peak_flops == pytest.approx(2 * one_rank_peak)
    assert 0 < result.mfu < 1 and result.samples_per_s > 0


@pytest.mark.usefixtures("restore_threads")
def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(benchmark):
    with pytest.raises(ValueError, match="global batch 8 does not split over 3 processes"):
        benchmark.main(["--cases", "llm-fp32", "--procs", "3"])
