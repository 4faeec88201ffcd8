"""Tokenizers travel with runs, exports and pre-tokenized codes (polymodal/tokenizers/carried.py)."""

import stat

import pytest
import torch
from tiny_image_tokenizers import export_tiny_tokenizer, tiny_tokenizer
from tokenizers import Tokenizer

from polymodal.tokenizers.carried import (
    carried_tokenizer_paths,
    check_recorded_tokenizer,
    copy_tokenizers,
    load_carried_tokenizers,
    record_image_tokenizer,
    recorded_tokenizer,
    tokenizers_folder,
)
from polymodal.tokenizers.image.tokenizer import ImageTokenizer
from polymodal.tokenizers.text.bpe import train_bpe


@pytest.fixture
def sources(tmp_path):
    text = tmp_path / "elsewhere" / "bpe.json"
    text.parent.mkdir()
    train_bpe(["some text to learn from", "more text, more words"] * 20, vocab_size=700).save(str(text))
    text.chmod(0o600)  # the user cache may be private: copies are not
    image = export_tiny_tokenizer(tmp_path / "elsewhere" / "tok-rgb", "rgb")
    return {"text": text, "tok_rgb@64": image}


def test_copies_are_whole_readable_and_load_back(tmp_path, sources):
    run = tmp_path / "run"
    copies = copy_tokenizers(sources, run / "tokenizers")
    assert copies == {"text": run / "tokenizers" / "text.json", "tok_rgb@64": run / "tokenizers" / "tok_rgb@64"}
    assert copies["text"].read_bytes() == sources["text"].read_bytes()
    assert stat.S_IMODE(copies["text"].stat().st_mode) == 0o644
    assert stat.S_IMODE((copies["tok_rgb@64"] / "model.safetensors").stat().st_mode) == 0o644

    checkpoint = run / "checkpoints" / "step_00000010"
    assert tokenizers_folder(checkpoint) == tokenizers_folder(run) == run / "tokenizers"
    assert carried_tokenizer_paths(checkpoint) == copies
    loaded = load_carried_tokenizers(run)
    assert isinstance(loaded["text"], Tokenizer) and isinstance(loaded["tok_rgb@64"], ImageTokenizer)
    assert loaded["text"].encode("more text").ids == Tokenizer.from_file(str(sources["text"])).encode("more text").ids
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # the export's weights, not a fresh initialisation
        assert torch.equal(loaded["tok_rgb@64"].encode(images), tiny_tokenizer("rgb").eval().encode(images))


def test_a_second_copy_replaces_the_first_and_nothing_half_copied_is_listed(tmp_path, sources):
    folder = tmp_path / "run" / "tokenizers"
    copy_tokenizers(sources, folder)
    (folder / "tok_rgb@64" / "stale.txt").write_text("from an older copy")
    (folder / ".tok_depth@64.partial").mkdir()  # an interrupted copy
    copy_tokenizers(sources, folder)
    assert not (folder / "tok_rgb@64" / "stale.txt").exists()
    assert sorted(carried_tokenizer_paths(tmp_path / "run")) == ["text", "tok_rgb@64"]
    assert carried_tokenizer_paths(tmp_path / "nothing-here") == {}
    assert copy_tokenizers({}, tmp_path / "empty") == {} and not (tmp_path / "empty").exists()


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer 'text'.*gone.json"):
        copy_tokenizers({"text": tmp_path / "gone.json"}, tmp_path / "run")


def test_codes_record_their_tokenizer_and_refuse_another(tmp_path):
    codes = tmp_path / "scenes" / "tok_rgb"
    codes.mkdir(parents=True)
    recorded = record_image_tokenizer(export_tiny_tokenizer(tmp_path / "a", "rgb"), codes)
    assert recorded == codes / "tokenizer" and recorded_tokenizer(str(codes / "shard-00000.tar")) == recorded
    assert record_image_tokenizer(tmp_path / "a", codes) == recorded  # the same one again: fine
    other = export_tiny_tokenizer(tmp_path / "b", "depth")  # other weights
    with pytest.raises(ValueError, match="holds codes of another tokenizer"):
        record_image_tokenizer(other, codes)
    with pytest.raises(ValueError, match="holds codes of another tokenizer"):
        check_recorded_tokenizer(other, codes)
    check_recorded_tokenizer(other, tmp_path / "scenes" / "tok_depth")  # nothing recorded there yet
    assert recorded_tokenizer("s3://bucket/tok_rgb/shard-00000.tar") is None
    assert recorded_tokenizer(str(tmp_path / "scenes" / "tok_depth" / "shard-00000.tar")) is None
