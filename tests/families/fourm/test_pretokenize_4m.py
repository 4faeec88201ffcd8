"""pretokenize-4m: key-aligned token and crop-settings shards whose codes equal the tokenizer applied by hand to
the stored crops, resumable runs, and corrupt samples left out of every output of their shard (and skipped when
training reads raw and pre-tokenized modalities together)."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_image_tokenizers import export_tiny_tokenizer, tiny_tokenizer
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from polymodal.checkpoint.weights import read_weights
from polymodal.config import ConfigError
from polymodal.data.multimodal import MultimodalShards, ResumableLoader, SampleError
from polymodal.data.multimodal.decode import decode_member
from polymodal.data.synth.writers import write_shards
from polymodal.families.fourm.cli import add_pretokenize_arguments
from polymodal.families.fourm.pretokenize import (
    CropOptions,
    code_dtype,
    crop_settings,
    pretokenize_4m,
    pretokenize_main,
)
from polymodal.tokenizers.loading import load_image_tokenizer

SIZE = 32
N_CROPS = 4
OPTIONS = CropOptions(n_crops=N_CROPS, image_size=SIZE, seed=3)
MODALITIES = ("rgb", "depth")
INTERPOLATION = {"rgb": InterpolationMode.BILINEAR, "depth": InterpolationMode.NEAREST}


def read_tar(path: Path) -> dict[str, np.ndarray]:
    with tarfile.open(path) as tar:
        return {m.name: np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False) for m in tar}


def read_raw(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.split(".", 1)[0]: tar.extractfile(m).read() for m in tar}


def source_keys(root: Path, shard: str) -> list[str]:
    return list(read_raw(root / "rgb" / shard))


def corrupt_rgb(shard: Path, position: int) -> str:
    """Replace the PNG at ``position`` of an rgb tar with undecodable bytes; return its key."""
    members = read_raw(shard)
    bad_key = list(members)[position]
    members[bad_key] = b"\x89PNG not really"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, data in members.items():
            info = tarfile.TarInfo(f"{key}.rgb.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return bad_key


def outputs(root: Path) -> list[Path]:
    return sorted(p for folder in ("tok_rgb", "tok_depth", "crop_settings") for p in (root / folder).glob("*.tar"))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("tokenizers")
    return {m: load_image_tokenizer(export_tiny_tokenizer(base / m, m)) for m in MODALITIES}


@pytest.fixture(scope="module")
def pretokenized(tmp_path_factory, tokenizers) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("scenes")
    write_shards(root, num_samples=12, samples_per_shard=6, size=SIZE, modalities=MODALITIES)
    report = pretokenize_4m(root, tokenizers, options=OPTIONS, batch_size=5, workers=2, cache_dir=root / "cache")
    return root, report


def test_exported_tokenizer_reloads_with_identical_weights(tmp_path):
    directory = export_tiny_tokenizer(tmp_path / "rgb", "rgb")
    original = tiny_tokenizer("rgb")
    loaded = load_image_tokenizer(directory)
    assert not loaded.training
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="neither an export"):
        load_image_tokenizer(tmp_path / "nowhere")


def test_outputs_are_key_aligned_with_the_source(pretokenized):
    root, report = pretokenized
    assert report.written == ["shard-00000.tar", "shard-00001.tar"] and not report.skipped_samples
    for shard in report.written:
        keys = source_keys(root, shard)
        assert len(keys) == 6
        for folder, extension in (("tok_rgb", "tok_rgb"), ("tok_depth", "tok_depth"), ("crop_settings",) * 2):
            members = read_tar(root / folder / shard)
            assert list(members) == [f"{k}.{extension}.npy" for k in keys]
        settings = read_tar(root / "crop_settings" / shard)
        for key in keys:
            rows = settings[f"{key}.crop_settings.npy"]
            assert rows.dtype == np.int64 and rows.shape == (N_CROPS, 5)
            assert rows[0].tolist() == [0, 0, SIZE, SIZE, 0]  # centre square of a square image, unflipped
            assert np.array_equal(rows, crop_settings(key, SIZE, SIZE, OPTIONS))
            codes = read_tar(root / "tok_rgb" / shard)[f"{key}.tok_rgb.npy"]
            assert codes.dtype == np.int16 and codes.shape == (N_CROPS, (SIZE // 8) ** 2)


def test_centre_row_codes_equal_the_tokenizer_on_the_centre_crop(pretokenized, tokenizers):
    root, _ = pretokenized
    raw = read_raw(root / "rgb" / "shard-00001.tar")
    codes = read_tar(root / "tok_rgb" / "shard-00001.tar")
    for key, data in raw.items():
        image = decode_member("rgb", "png", data)  # 32x32: the centre crop is the whole image, no resize
        expected = tokenizers["rgb"].encode(image[None].float() / 255.0).flatten(1)
        assert torch.equal(torch.from_numpy(codes[f"{key}.tok_rgb.npy"][:1]).long(), expected)


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_row_is_its_crop_reapplied_and_encoded(pretokenized, tokenizers, modality):
    root, _ = pretokenized
    extension = "rgb.png" if modality == "rgb" else "depth.npy"
    raw = read_raw(root / modality / "shard-00000.tar")
    codes = read_tar(root / f"tok_{modality}" / "shard-00000.tar")
    settings = read_tar(root / "crop_settings" / "shard-00000.tar")
    crops, stored, flips = [], [], 0
    for key, data in raw.items():
        image = decode_member(modality, extension.split(".")[1], data)
        for top, left, height, width, flip in settings[f"{key}.crop_settings.npy"].tolist():
            size, mode = [SIZE, SIZE], INTERPOLATION[modality]
            crop = F.resized_crop(image, top, left, height, width, size, mode, antialias=True)
            crop = crop.flip(-1) if flip else crop
            crops.append(crop.float() / 255.0 if modality == "rgb" else crop)
            flips += flip
        stored.append(torch.from_numpy(codes[f"{key}.tok_{modality}.npy"]).long())
    expected = tokenizers[modality].encode(torch.stack(crops)).flatten(1)
    assert torch.equal(torch.cat(stored), expected)
    assert flips > 0  # the random rows do exercise flips


def test_rerun_skips_complete_shards_and_redoes_a_deleted_output(pretokenized, tokenizers):
    root, _ = pretokenized
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs(root)}
    report = pretokenize_4m(root, tokenizers, options=OPTIONS, batch_size=5, cache_dir=root / "cache")
    assert report.written == [] and report.complete == ["shard-00000.tar", "shard-00001.tar"]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs(root)} == before

    (root / "tok_depth" / "shard-00001.tar").unlink()
    report = pretokenize_4m(root, tokenizers, options=OPTIONS, batch_size=7, cache_dir=root / "cache")
    assert report.written == ["shard-00001.tar"] and report.complete == ["shard-00000.tar"]
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs(root)}
    for path, (mtime, data) in before.items():
        assert after[path][1] == data  # a redone shard is identical (batch size does not matter)
        assert (after[path][0] == mtime) == (path.name == "shard-00000.tar")


def test_a_corrupt_image_is_reported_and_left_out_of_every_output(tmp_path, tokenizers):
    root = tmp_path / "scenes"
    write_shards(root, num_samples=12, samples_per_shard=6, size=SIZE, modalities=MODALITIES)
    keys = source_keys(root, "shard-00001.tar")
    bad_key = corrupt_rgb(root / "rgb" / "shard-00001.tar", position=2)
    report = pretokenize_4m(root, tokenizers, options=OPTIONS, cache_dir=tmp_path / "cache")
    assert [(s.key, s.reason) for s in report.skipped_samples] == [(bad_key, "corrupt_image")]
    assert "shard-00001.tar" in report.skipped_samples[0].shard and "rgb.png" in report.skipped_samples[0].detail
    expected = [k for k in keys if k != bad_key]
    for folder in ("tok_rgb", "tok_depth", "crop_settings"):
        assert [name.split(".")[0] for name in read_tar(root / folder / "shard-00001.tar")] == expected
        assert len(read_tar(root / folder / "shard-00000.tar")) == 6


def test_training_on_raw_and_pretokenized_modalities_skips_the_left_out_sample(tmp_path, tokenizers):
    root = tmp_path / "scenes"
    write_shards(root, num_samples=12, samples_per_shard=6, size=SIZE, modalities=("rgb",))
    bad_key = corrupt_rgb(root / "rgb" / "shard-00001.tar", position=2)
    report = pretokenize_4m(root, {"rgb": tokenizers["rgb"]}, options=OPTIONS, cache_dir=tmp_path / "cache")
    assert [s.key for s in report.skipped_samples] == [bad_key]

    pattern = f"{root}/[rgb,tok_rgb,crop_settings]/shard-{{00000..00001}}.tar"
    dataset = MultimodalShards(pattern, cache_dir=tmp_path / "cache")
    assert len(dataset) == 12 and dataset.skips.total == 0
    bad_id = 6 + 2
    assert dataset.index.locate(bad_id) == (1, bad_key)
    with pytest.raises(SampleError) as caught:
        dataset[bad_id]
    assert caught.value.reason == "missing_member" and "tok_rgb" in caught.value.detail

    loader = ResumableLoader(dataset, batch_size=4, seed=0)
    batches = [next(loader) for _ in range(loader.batches_per_epoch)]
    ids = torch.cat([batch["sample_id"] for batch in batches]).tolist()
    assert len(ids) == 12 and set(ids) == set(range(12)) - {bad_id}  # one sample seen twice in its place
    assert loader.skip_counts() == {"missing_member": 1}
    for batch in batches:
        assert batch["rgb"].shape == (4, 3, SIZE, SIZE)
        assert batch["tok_rgb"].shape == (4, N_CROPS, (SIZE // 8) ** 2)
        for row, sample_id in enumerate(batch["sample_id"].tolist()):  # each row holds its own key's crops
            key = dataset.index.locate(sample_id)[1]
            assert np.array_equal(batch["crop_settings"][row].numpy(), crop_settings(key, SIZE, SIZE, OPTIONS))


def test_cli_runs_and_bad_arguments_are_clear_errors(tmp_path, capsys):
    import argparse

    root = tmp_path / "scenes"
    write_shards(root, num_samples=3, samples_per_shard=3, size=SIZE, modalities=("rgb",))
    directory = export_tiny_tokenizer(tmp_path / "tok", "rgb")
    parser = add_pretokenize_arguments(argparse.ArgumentParser())
    base = ["--source", str(root), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    args = parser.parse_args([*base, "--tokenizer", f"rgb={directory}", "--n-crops", "2", "--image-size", "16"])
    assert pretokenize_main(args) == 0
    assert "pre-tokenized 1 shards" in capsys.readouterr().out
    codes = read_tar(tmp_path / "out" / "tok_rgb" / "shard-00000.tar")
    assert all(v.shape == (2, 4) for v in codes.values()) and len(codes) == 3
    recorded = tmp_path / "out" / "tok_rgb" / "tokenizer"  # the codes carry their decoder
    assert read_weights(recorded).keys() == read_weights(directory).keys()
    assert all(torch.equal(read_weights(recorded)[k], v) for k, v in read_weights(directory).items())
    other = export_tiny_tokenizer(tmp_path / "other-tok", "depth")
    with pytest.raises(ConfigError, match="holds codes of another tokenizer"):  # refused before encoding anything
        pretokenize_main(parser.parse_args([*base, "--tokenizer", f"rgb={other}"]))

    bad_size = parser.parse_args([*base, "--tokenizer", f"rgb={directory}", "--image-size", "20"])
    with pytest.raises(ConfigError, match="downsampling factor 8"):
        pretokenize_main(bad_size)
    twice = parser.parse_args([*base, "--tokenizer", f"rgb={directory}", "--tokenizer", f"rgb={directory}"])
    with pytest.raises(ConfigError, match="twice"):
        pretokenize_main(twice)
    missing = parser.parse_args([*base, "--tokenizer", f"depth={directory}"])
    with pytest.raises(ConfigError, match="no shard"):
        pretokenize_main(missing)
    assert not (tmp_path / "out" / "tok_depth").exists()  # nothing recorded for codes never written
    with pytest.raises(ValueError, match="n_crops"):
        CropOptions(n_crops=0)


def test_codes_widen_to_int32_only_past_the_int16_range():
    assert code_dtype(32768) == np.int16 and code_dtype(32769) == np.int32
