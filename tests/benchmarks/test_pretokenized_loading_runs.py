"""Smoke test of benchmarks/pretokenized_loading.py: it runs and prints both read rates, their ratio, the bytes per
token and the goals, both forms of the items read back identical, and its comparison does catch a changed item."""

import pickle
import re

import pytest

BENCHMARK = "pretokenized_loading"
TINY = ["--samples", "4", "--target-size", "32", "--rounds", "2", "--passes", "1", "--workers", "1"]


@pytest.fixture(scope="module")
def both_forms(benchmark, tmp_path_factory):
    """A tiny record set and the same items in upstream's form."""
    root = tmp_path_factory.mktemp("forms")
    inputs = benchmark.lumina_inputs(root / "inputs", 3, 32)
    record_path = benchmark.build_record_set(inputs, root / "records", batch_size=4, workers=1)
    record_set = benchmark.RecordSet(record_path)
    benchmark.write_upstream_form(record_set, root / "upstream")
    return record_set, record_path, root / "upstream"


def test_tiny_run_prints_rates_sizes_goals_and_identical_reads(benchmark, capsys):
    result = benchmark.main(TINY)
    output = capsys.readouterr().out
    assert re.search(r"data: 12 items, [\d,]+ tokens", output)
    assert "reads identical: True (12 items" in output and result.reads_identical
    assert re.search(r"ours: RecordSet\.item \(A\)\s+\d+\s+\d+", output)
    assert re.search(r"upstream: open \+ pickle \(B\)\s+\d+\s+\d+", output)
    assert re.search(r"ratio ours/upstream\s+\d+\.\d+\s+\d+\.\d+", output)
    for name in ("ours: shards", r"ours: shards \+ record \+ manifest", r"upstream: pickles \+ record list"):
        assert re.search(rf"  {name}\s+\d+\.\d\d\s+\d+\.\d\d\n", output)
    assert re.search(r"goal items/s ours/upstream >= 10: (met|NOT met) \(median \d+\.\d\d\)", output)
    assert re.search(r"goal bytes/token <= 2\.2: (met|NOT met) \(\d+\.\d{3}, ", output)
    assert result.items == 12 and result.reads_per_round == 12
    assert len(result.ours_s) == len(result.upstream_s) == 2 and min(result.ours_s + result.upstream_s) > 0


def test_both_forms_hold_the_same_items_and_their_sizes_are_counted(benchmark, both_forms):
    record_set, record_path, upstream_dir = both_forms
    entries = benchmark.load_upstream_records(upstream_dir)
    assert [entry["id"] for entry in entries] == list(range(len(record_set))) and len(entries) == 9
    assert [entry["len"] for entry in entries] == record_set.lengths.tolist()
    assert benchmark.differing_items(record_set, entries) == []
    sizes = benchmark.disk_sizes(record_path, upstream_dir)
    tokens = int(record_set.lengths.sum())
    # 2 bytes per uint16 token and 1/8 for its label bit, plus each shard's header and offsets
    assert 2.125 * tokens < sizes["ours: shards"].files < sizes["ours: shards + record + manifest"].files
    assert sizes["upstream: pickles + record list"].files > 3 * tokens  # two lists of ints of >= 2 bytes each


def test_a_changed_item_is_caught(benchmark, both_forms, tmp_path):
    record_set, _, upstream_dir = both_forms
    entries = benchmark.load_upstream_records(upstream_dir)
    item = benchmark.read_upstream_item(entries[4])
    changed = tmp_path / "4.pkl"
    labels = [benchmark.IGNORE if label != benchmark.IGNORE else 0 for label in item["label"]]
    changed.write_bytes(pickle.dumps({**item, "label": labels}))
    with_changed_labels = [*entries[:4], {**entries[4], "file": str(changed)}, *entries[5:]]
    assert benchmark.differing_items(record_set, with_changed_labels) == [4]
    assert benchmark.differing_items(record_set, entries[:-1]) == list(range(9))


@pytest.mark.parametrize(
    "argv", [["--samples", "0"], ["--rounds", "0"], ["--passes", "0"], ["--target-size", "40"], ["--profile", "-1"]]
)
def test_bad_arguments_are_rejected(benchmark, argv, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert "error" in capsys.readouterr().err
