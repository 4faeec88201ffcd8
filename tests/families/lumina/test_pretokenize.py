"""``polymodal lumina pretokenize`` / ``concat-records`` on the synthetic conversation corpus with bad items."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from lumina_corpus import CODEBOOK, TEXT_VOCAB, settings_for

from polymodal.data.synth.conversations import write_conversations
from polymodal.families.lumina.conversations import PLACEHOLDER
from polymodal.families.lumina.data import LuminaData
from polymodal.families.lumina.images import closest_bucket, crop_rng, fit_to_bucket, open_image
from polymodal.families.lumina.pretokenize import pretokenize_rank
from polymodal.families.lumina.records import RecordError, RecordSet, concat_records
from polymodal.families.lumina.vocabulary import parse_image_block
from polymodal.tokenizers.loading import load_image_tokenizer
from polymodal.tokenizers.text.bpe import load_tokenizer

REPO = Path(__file__).resolve().parents[3]


def run_all_ranks(inputs: dict[str, Path], out_dir: Path, **changes) -> dict:
    settings = settings_for(inputs, out_dir, **changes)
    for rank in range(settings.splits):
        pretokenize_rank(replace(settings, rank=rank))
    return concat_records(out_dir, out_dir / "record.json")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def records(lumina_inputs, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("records")
    run_all_ranks(lumina_inputs, out_dir)
    return out_dir


def test_every_bad_item_is_counted_by_reason_and_every_good_one_kept(lumina_inputs, records):
    reported = {}
    for report in sorted(records.glob("*-errors.jsonl")):
        for line in report.read_text().splitlines():
            error = json.loads(line)
            reported[error["id"]] = error["reason"]
    assert reported == json.loads(lumina_inputs["bad_items"].read_text())
    merged = json.loads((records / "record.json").read_text())
    num_inputs = len(json.loads(lumina_inputs["conversations"].read_text()))
    assert merged["items"] + sum(merged["errors"].values()) == num_inputs
    synthetic_reasons = {"placeholder_mismatch", "role_order", "missing_image", "unreadable_image", "image_too_large"}
    assert set(merged["errors"]) == synthetic_reasons | {"empty_conversation", "non_utf8", "malformed_item"}


def test_good_items_hold_their_text_and_the_codes_of_their_cropped_images(lumina_inputs, records):
    """Against a plain one-item-at-a-time re-computation: text decodes back to the turns, each image block holds
    the codes of that image opened, snapped, cropped (same seeded offset) and encoded alone."""
    items = json.loads(lumina_inputs["conversations"].read_text())
    record_set = RecordSet(records / "record.json")
    text = load_tokenizer(lumina_inputs["text"])
    image_tokenizer = load_image_tokenizer(lumina_inputs["image"])
    layout = record_set.layout
    buckets = [tuple(b) for b in record_set.manifest["buckets"]]
    assert len(record_set) > 40 and set(record_set.lengths) and record_set.layout.vocab_size == TEXT_VOCAB + CODEBOOK
    carried = record_set.tokenizer_paths()
    assert carried["text"].read_bytes() == lumina_inputs["text"].read_bytes()
    copy = load_image_tokenizer(carried["image"]).state_dict()
    assert all(torch.equal(copy[name], value) for name, value in image_tokenizer.state_dict().items())
    for i in range(len(record_set)):
        tokens, _ = record_set.item(i)
        index = int(record_set.input_index[i])
        item = items[index]
        starts = np.flatnonzero(tokens == layout.begin_image)
        ends = np.flatnonzero(tokens == layout.end_image)
        assert len(starts) == len(ends) == len(item.get("image", []))
        plain, previous = [], 0
        for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
            plain.append(tokens[previous:start])
            codes = parse_image_block(tokens[start : end + 1], layout)
            image = open_image(lumina_inputs["conversations"].parent / item["image"][k], 1 << 26, 8)
            bucket = closest_bucket(image.height, image.width, buckets)
            fitted = np.array(fit_to_bucket(image, bucket, crop_rng(0, index, k)))
            pixels = torch.from_numpy(fitted).permute(2, 0, 1)[None].float() / 255
            np.testing.assert_array_equal(codes, image_tokenizer.encode(pixels)[0].numpy())
            plain.append(np.array([layout.image_placeholder]))
            previous = end + 1
        plain.append(tokens[previous:])
        decoded = text.decode(np.concatenate(plain).tolist(), skip_special_tokens=False)
        expected = "<|bos|>" + "".join(turn["value"] + "<|eot|>" for turn in item["conversations"])
        assert decoded == expected.replace(PLACEHOLDER, "<|image|>")


def test_records_do_not_depend_on_workers_or_encoder_batch_size(lumina_inputs, records, tmp_path):
    run_all_ranks(lumina_inputs, tmp_path, workers=2, batch_size=3)
    assert tree_bytes(tmp_path) == tree_bytes(records)


def test_rerunning_a_finished_rank_changes_nothing(lumina_inputs, records):
    before = tree_bytes(records)
    pretokenize_rank(settings_for(lumina_inputs, records, rank=1))
    after = tree_bytes(records)
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }


def test_too_long_items_are_rejected_not_truncated(lumina_inputs, tmp_path):
    merged = run_all_ranks(lumina_inputs, tmp_path, max_tokens=120)
    assert merged["errors"]["too_long"] > 0
    assert RecordSet(tmp_path / "record.json").lengths.max() <= 120


def test_an_out_dir_of_other_settings_is_refused(lumina_inputs, records):
    with pytest.raises(RecordError, match="other settings.*seed"):
        pretokenize_rank(settings_for(lumina_inputs, records, seed=1))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "polymodal", "lumina", *args]


def _pretokenize_args(inputs: dict[str, Path], out_dir: Path, rank: int, chunk_size: int = 8) -> list[str]:
    return _cli(
        "pretokenize",
        *("--in_filename", str(inputs["conversations"]), "--out_dir", str(out_dir)),
        *("--splits", "2", "--rank", str(rank), "--target_size", "64", "--chunk_size", str(chunk_size)),
        *(
            "--batch_size",
            "4",
            "--text_vocab_size",
            str(TEXT_VOCAB),
            "--text_tokenizer",
            str(inputs["text"]),
            "--image_tokenizer",
            str(inputs["image"]),
        ),
    )


@pytest.mark.slow
def test_ranks_run_as_parallel_processes_and_a_killed_rank_reruns_to_the_same_bytes(lumina_inputs, records, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out_dir = tmp_path / "records"
    killed_record = out_dir / "00000-of-00002-record.json"
    with subprocess.Popen(_pretokenize_args(lumina_inputs, out_dir, 0, chunk_size=1), env=env) as doomed:
        while not killed_record.exists() and doomed.poll() is None:  # the record follows each finished chunk
            time.sleep(0.005)
        doomed.send_signal(signal.SIGKILL)
    assert doomed.returncode == -signal.SIGKILL, "the rank finished before it could be killed"
    assert not json.loads(killed_record.read_text())["complete"]
    with pytest.raises(RecordError, match="ranks \\[1\\] of 2 have no record and ranks \\[0\\] of 2 have not finished"):
        concat_records(out_dir, out_dir / "record.json")
    # chunk_size is part of the settings: the rerun continues with the killed run's
    ranks = [subprocess.Popen(_pretokenize_args(lumina_inputs, out_dir, r, chunk_size=1), env=env) for r in (0, 1)]
    assert [rank.wait() for rank in ranks] == [0, 0]
    concat = subprocess.run(
        _cli("concat-records", "--sub_record_dir", str(out_dir), "--save_path", str(out_dir / "record.json")),
        env=env,
        capture_output=True,
        text=True,
    )
    assert concat.returncode == 0, concat.stderr
    clean = tmp_path / "clean"
    run_all_ranks(lumina_inputs, clean, chunk_size=1)
    assert {k: v for k, v in tree_bytes(out_dir).items() if not k.endswith(".lock")} == {
        k: v for k, v in tree_bytes(clean).items() if not k.endswith(".lock")
    }


def test_concat_refuses_a_missing_split(lumina_inputs, tmp_path):
    pretokenize_rank(settings_for(lumina_inputs, tmp_path, rank=1))
    with pytest.raises(RecordError, match="ranks \\[0\\] of 2 have no record"):
        concat_records(tmp_path, tmp_path / "record.json")


def test_concat_refuses_mismatched_splits_changed_shards_and_duplicates(lumina_inputs, records, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in tree_bytes(records).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    stray = copy / "00000-of-00003-record.json"
    stray.write_bytes((copy / "00000-of-00002-record.json").read_bytes())
    with pytest.raises(RecordError, match="--splits \\[3\\]"):
        concat_records(copy, copy / "record.json")
    stray.unlink()

    record_file = copy / "00001-of-00002-record.json"
    original = record_file.read_text()
    rank0_shard = json.loads((copy / "00000-of-00002-record.json").read_text())["shards"][0]
    rank1 = json.loads(original)
    record_file.write_text(json.dumps({**rank1, "shards": [*rank1["shards"], rank0_shard]}))
    with pytest.raises(RecordError, match="outside rank 1's partition"):
        concat_records(copy, copy / "record.json")
    record_file.write_text(json.dumps({**rank1, "shards": [*rank1["shards"], rank1["shards"][0]]}))
    with pytest.raises(RecordError, match="appear more than once"):
        concat_records(copy, copy / "record.json")
    record_file.write_text(original)

    shard = copy / rank1["shards"][0]["path"]
    intact = shard.read_bytes()
    shard.write_bytes(intact[:-1] + bytes([intact[-1] ^ 1]))
    with pytest.raises(RecordError, match="changed since"):
        concat_records(copy, copy / "record.json")
    shard.write_bytes(intact)
    concat_records(copy, copy / "record.json")

    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "seed": 7}))
    with pytest.raises(RecordError, match="other settings"):
        concat_records(copy, copy / "record.json")


def test_a_jsonl_corpus_is_streamed_and_its_bad_lines_reported(lumina_inputs, tmp_path):
    corpus = write_conversations(tmp_path / "corpus", 12, seed=2, size=64, bad_fraction=0.3, jsonl=True)
    inputs = {**lumina_inputs, "conversations": corpus}
    merged = run_all_ranks(inputs, tmp_path / "records")
    reported = {
        error["id"]: error["reason"]
        for report in (tmp_path / "records").glob("*-errors.jsonl")
        for error in map(json.loads, report.read_text().splitlines())
    }
    assert reported == json.loads((tmp_path / "corpus/bad_items.json").read_text())
    assert {"non_utf8", "malformed_item"} <= set(reported.values())  # a line that is not UTF-8, one that is not JSON
    assert merged["items"] + len(reported) == len(corpus.read_bytes().splitlines())


def test_the_synthetic_records_pack_over_90_percent_full_and_train_on_the_assistant_turns(records, tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(f"META:\n  - path: {records / 'record.json'}\n    type: synthetic\n")
    data = LuminaData(str(config), seq_len=512, batch_size=2, vocab_size=TEXT_VOCAB + CODEBOOK)
    assert data.info()["fill_percent"] >= 90
    record_set = RecordSet(records / "record.json")
    epoch_tokens = epoch_targets = 0
    for _ in range(data.train.batches_per_epoch):
        batch = next(data.train)
        assert batch["input_ids"].shape == (2, 512)
        epoch_tokens += int((batch["document_ids"] >= 0).sum())
        epoch_targets += int((batch["target_ids"] != -100).sum())
    rows = data.plan.epoch_order(0)
    visited = np.concatenate([rows[k] for k in range(data.train.batches_per_epoch * 2)])
    assert epoch_tokens == int(record_set.lengths[visited].sum())
    # an item's first token is never a target; every labelled one after it is (targets are the next token)
    assert epoch_targets == sum(int(record_set.item(int(i))[1][1:].sum()) for i in visited)
