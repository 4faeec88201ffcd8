"""Smoke test of benchmarks/moe.py: on tiny sizes both sides compute the same output and gradient and it prints
their times and ratio."""

import re

BENCHMARK = "moe"
TINY = ["--batch", "2", "--seq-len", "8", "--dim", "16", "--hidden", "24", "--experts", "4", "--rounds", "2"]


def test_tiny_run_prints_agreement_times_and_ratio(benchmark, capsys):
    for extra in ([], ["--capacity-factor", "0.5", "--top-k", "1"]):
        batched, looped = benchmark.main([*TINY, *extra, "--threads", "1"])
        output = capsys.readouterr().out
        difference = re.search(r"max \|difference\| of output and input gradient: (\S+)", output)
        assert difference and float(difference[1]) < 1e-5
        assert re.search(r"ratio B/A\s+\d+\.\d\d\s+\d+\.\d\d", output)
        assert len(batched) == len(looped) == 2
