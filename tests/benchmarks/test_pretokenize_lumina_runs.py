"""Smoke test of benchmarks/pretokenize_lumina.py: it runs, prints both sides and their ratio, both sides give the
same text tokens, labels and codes, and its comparison does catch outputs that really disagree."""

import json
import re

import numpy as np
import pytest

BENCHMARK = "pretokenize_lumina"
TINY = ["--samples", "3", "--batch-size", "4", "--target-size", "32", "--rounds", "2"]


def test_tiny_lumina_run_prints_both_rates_a_ratio_and_the_same_sequences(benchmark, restore_threads, capsys):
    result = benchmark.main([*TINY, "--workers", "2", "--threads", "1"])
    output = capsys.readouterr().out
    assert re.search(
        r"lumina: 9 items with \d+ images \(32 px target\), 2 rounds, pretokenize_rank \(2 decode processes", output
    )
    assert re.search(r"pretokenize_rank \(A\)\s+\d+\s+\d+", output)
    assert re.search(r"one at a time \(B\)\s+\d+\s+\d+", output)
    assert re.search(r"ratio A/B\s+\d+\.\d+\s+\d+\.\d+", output)
    assert len(result.ours_s) == len(result.upstream_s) == 2 and min(result.ours_s + result.upstream_s) > 0
    assert result.items == 9 and result.images > 0
    # Same items, text tokens and labels; image codes equal or float near-ties (batch 4 against batch 1).
    check = result.check
    assert check.items == 9 and check.disagreeing_items == 0 and check.total_codes > 0 and check.near_ties_only
    assert "sequences: 9 items, 0 disagree in text, labels or length; codes identical" in output


@pytest.fixture(scope="module")
def lumina_outputs(benchmark, tmp_path_factory):
    """Tiny inputs, our record set of them and the reference's upstream form."""
    root = tmp_path_factory.mktemp("lumina")
    inputs = benchmark.lumina_inputs(root / "inputs", 3, 32)
    record_path = benchmark.build_record_set(inputs, root / "ours", batch_size=4, workers=1)
    benchmark.upstream_pretokenize(inputs, root / "upstream")
    return inputs, record_path, root / "upstream"


def changed_copy(benchmark, upstream_dir, out_dir, change):
    """The upstream form with ``change(tokens, labels)`` applied to every item's lists (in place), under ``out_dir``."""
    (out_dir / "files").mkdir(parents=True)
    entries = []
    for entry in json.loads((upstream_dir / "record.json").read_text()):
        item = benchmark.read_upstream_item(entry)
        change(item["token"], item["label"])
        entries.append(benchmark.save_upstream_item(out_dir / "files", entry["id"], item["token"], item["label"]))
    benchmark.save_upstream_records(out_dir / "record.json", entries)
    return out_dir


def test_sequence_comparison_catches_other_codes_text_and_labels(benchmark, lumina_outputs, tmp_path):
    inputs, record_path, upstream_dir = lumina_outputs
    layout = benchmark.RecordSet(record_path).layout
    unchanged = benchmark.compare_sequences(inputs, record_path, upstream_dir)
    assert unchanged.disagreeing_items == 0 and unchanged.total_codes > 0 and unchanged.near_ties_only

    def other_codes(tokens, labels):  # every image code moved to the next code: a real disagreement
        for position, token in enumerate(tokens):
            if layout.is_image_code(np.array(token)):
                tokens[position] = layout.image_offset + (token - layout.image_offset + 1) % layout.codebook_size
                labels[position] = tokens[position] if labels[position] != benchmark.IGNORE else benchmark.IGNORE

    check = benchmark.compare_sequences(
        inputs, record_path, changed_copy(benchmark, upstream_dir, tmp_path / "c", other_codes)
    )
    assert check.disagreeing_items == 0 and check.differing_codes == check.total_codes > 0
    assert check.largest_gap > benchmark.TIE_TOLERANCE and not check.near_ties_only

    def other_text(tokens, labels):
        tokens[1] = tokens[1] + 1 if tokens[1] < layout.image_offset - 1 else tokens[1] - 1

    check = benchmark.compare_sequences(
        inputs, record_path, changed_copy(benchmark, upstream_dir, tmp_path / "t", other_text)
    )
    assert check.disagreeing_items == 9 and not check.near_ties_only

    def other_labels(tokens, labels):
        labels[0] = tokens[0]  # <|bos|> trained

    check = benchmark.compare_sequences(
        inputs, record_path, changed_copy(benchmark, upstream_dir, tmp_path / "l", other_labels)
    )
    assert check.disagreeing_items == 9


@pytest.mark.parametrize(
    "args", ["--samples 0", "--workers 0", "--batch-size 0", "--threads 0", "--target-size 40", "--family lumina"]
)
def test_bad_arguments_are_rejected(benchmark, args, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(args.split())
    assert "error" in capsys.readouterr().err
