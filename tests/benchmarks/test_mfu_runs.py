"""Smoke test of benchmarks/mfu.py: the tiny 4M case trains through the trainer and prints its logged MFU."""

import pytest

BENCHMARK = "mfu"


@pytest.mark.usefixtures("restore_threads")
def test_fourm_case_prints_the_logged_mfu(benchmark, capsys):
    (result,) = benchmark.main(["--cases", "fourm-fp32", "--steps", "1", "--warmup", "1", "--threads", "1"])
    output = capsys.readouterr().out
    assert "fourm-fp32" in output and "MFU" in output
    assert 0 < result.mfu < 1 and result.samples_per_s > 0 and result.tokens_per_s > 0  # 4M's data is tokens


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--warmup", "0"], ["--cases", "llm-fp16"]])
def test_bad_arguments_are_rejected(benchmark, argv, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert "error" in capsys.readouterr().err
