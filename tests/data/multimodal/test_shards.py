"""4M shard patterns, the shard index and MultimodalShards on small shard trees written by the test."""

import io
import json
import pickle
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.multimodal import (
    MultimodalShards,
    SampleError,
    ShardIndex,
    SkipCounter,
    decode_member,
    expand_shard_pattern,
)
from polymodal.data.multimodal import shard_index as shard_index_module

MODALITIES = ["rgb", "depth", "normal", "semseg", "edges", "det", "caption", "label"]
SIZE = 8


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def make_sample(sample_id: int) -> tuple[dict[str, tuple[str, bytes]], dict]:
    """Members ``{modality: (extension, bytes)}`` per the shard contract, and the values they should decode to."""
    rng = np.random.default_rng(sample_id)
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 10.0, (SIZE, SIZE)).astype(np.float32)
    normal = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    semseg = rng.integers(0, 5, (SIZE, SIZE), dtype=np.uint8)
    edges = (rng.integers(0, 2, (SIZE, SIZE)) * 255).astype(np.uint8)
    count = sample_id % 3 + 1
    boxes = [[float(i), 1.0, float(i + 2), 3.5] for i in range(count)]
    labels = [i % 4 + 1 for i in range(count)]
    captions = [f"scene {sample_id}", f"{count} objects"]
    members = {
        "rgb": ("rgb.png", png_bytes(rgb)),
        "depth": ("depth.npy", npy_bytes(depth)),
        "normal": ("normal.png", png_bytes(normal)),
        "semseg": ("semseg.png", png_bytes(semseg)),
        "edges": ("edges.png", png_bytes(edges)),
        "det": ("det.json", json.dumps({"boxes": boxes, "labels": labels, "names": ["x"] * count}).encode()),
        "caption": ("caption.json", json.dumps(captions).encode()),
        "label": ("label.txt", f"{count - 1}\n".encode()),
    }
    expected = {
        "rgb": torch.from_numpy(rgb).permute(2, 0, 1),
        "depth": torch.from_numpy(depth)[None],
        "normal": torch.from_numpy(normal).permute(2, 0, 1).double() / 255 * 2 - 1,
        "semseg": torch.from_numpy(semseg).long(),
        "edges": torch.from_numpy(edges)[None],
        "det": {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)},
        "caption": captions,
        "label": torch.tensor(count - 1),
    }
    return members, expected


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_shard_tree(root: Path, shards: int = 3, per_shard: int = 3) -> list[dict]:
    """``root/<modality>/shard-0000k.tar`` for every modality; returns the expected value of each sample id."""
    expected_values = []
    for shard in range(shards):
        by_modality: dict[str, list[tuple[str, bytes]]] = {m: [] for m in MODALITIES}
        for sample_id in range(shard * per_shard, (shard + 1) * per_shard):
            members, expected = make_sample(sample_id)
            for modality, (extension, data) in members.items():
                by_modality[modality].append((f"{sample_id:08d}.{extension}", data))
            expected_values.append(expected)
        for modality, members_of_tar in by_modality.items():
            rewrite_tar(root, modality, shard, members_of_tar)
    return expected_values


def rewrite_tar(root: Path, modality: str, shard: int, members: list[tuple[str, bytes]]) -> Path:
    path = root / modality / f"shard-{shard:05d}.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(members))
    return path


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as archive:
        return [(info.name, archive.extractfile(info).read()) for info in archive.getmembers()]


def pattern_of(root: Path | str, modalities: list[str] = MODALITIES, shards: int = 3) -> str:
    return f"{root}/[{','.join(modalities)}]/shard-{{00000..{shards - 1:05d}}}.tar"


def assert_sample_equal(sample: dict, expected: dict) -> None:
    assert set(sample) == set(expected)
    for name in ("rgb", "semseg", "edges", "depth"):
        assert sample[name].dtype == expected[name].dtype, name
        torch.testing.assert_close(sample[name], expected[name], rtol=0, atol=0)
    assert sample["normal"].dtype == torch.float32
    torch.testing.assert_close(sample["normal"].double(), expected["normal"], rtol=0, atol=1e-6)
    assert sample["det"]["boxes"].dtype == torch.float32 and sample["det"]["labels"].dtype == torch.int64
    torch.testing.assert_close(sample["det"]["boxes"], expected["det"]["boxes"])
    assert torch.equal(sample["det"]["labels"], expected["det"]["labels"])
    assert sample["caption"] == expected["caption"]
    assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
    assert sample["label"] == expected["label"]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, list[dict]]:
    root = tmp_path / "shards"
    return root, write_shard_tree(root)


# ---------------------------------------------------------------- pattern expansion


def test_pattern_brackets_and_padded_range():
    urls = expand_shard_pattern("/data/[rgb,depth]/shard-{00008..00011}.tar")
    assert list(urls) == ["rgb", "depth"]
    assert urls["rgb"] == [f"/data/rgb/shard-{i:05d}.tar" for i in range(8, 12)]
    assert urls["depth"] == [f"/data/depth/shard-{i:05d}.tar" for i in range(8, 12)]


def test_pattern_s3_plain_single_modality_and_lists():
    assert expand_shard_pattern("s3://bucket/root/[caption]/shard-{0..2}.tar") == {
        "caption": [
            "s3://bucket/root/caption/shard-0.tar",
            "s3://bucket/root/caption/shard-1.tar",
            "s3://bucket/root/caption/shard-2.tar",
        ]
    }
    assert expand_shard_pattern("s3://bucket/root/rgb/shard-{00009..00010}.tar") == {
        "rgb": ["s3://bucket/root/rgb/shard-00009.tar", "s3://bucket/root/rgb/shard-00010.tar"]
    }
    assert expand_shard_pattern("root/depth/shard-00003.tar") == {"depth": ["root/depth/shard-00003.tar"]}
    assert expand_shard_pattern("r/[a,b]/{x,y}-{1..2}.tar")["b"] == [
        "r/b/x-1.tar",
        "r/b/x-2.tar",
        "r/b/y-1.tar",
        "r/b/y-2.tar",
    ]


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("", "empty"),
        ("root/[rgb,depth/shard-0.tar", "unclosed"),
        ("root/rgb]/shard-0.tar", "unmatched"),
        ("root/[rgb]/[depth]/shard-0.tar", "at most one"),
        ("root/[rgb,]/shard-0.tar", "bad modality list"),
        ("root/[rgb,rgb]/shard-0.tar", "repeats"),
        ("root/rgb/shard-{5..2}.tar", "start > end"),
        ("root/rgb/shard-{a..b}.tar", "neither a range"),
        ("root/rgb/shard-{1{2}}.tar", "nested"),
        ("root/{rgb,depth}/shard-0.tar", "spans folders"),
        ("shard-0.tar", "no parent folder"),
    ],
)
def test_pattern_errors(pattern, message):
    with pytest.raises(ValueError, match=message):
        expand_shard_pattern(pattern)


# ---------------------------------------------------------------- index


def test_index_locates_every_sample_and_second_build_hits_the_cache(tree, tmp_path, monkeypatch):
    root, expected = tree
    dataset = MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache")
    assert len(dataset) == len(expected) == 9
    assert [dataset.index.locate(i) for i in (0, 2, 3, 8)] == [
        (0, "00000000"),
        (0, "00000002"),
        (1, "00000003"),
        (2, "00000008"),
    ]
    assert len(list((tmp_path / "cache" / "shard_index").glob("shard-index-*.json"))) == 1

    def no_scan(*args, **kwargs):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(shard_index_module, "scan_tar", no_scan)
    cached = MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache")
    assert len(cached) == 9 and cached.index.locate(5) == (1, "00000005")
    assert_sample_equal(cached[5], expected[5])


def test_index_rebuilds_when_a_shard_changes(tree, tmp_path):
    root, _ = tree
    MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache")
    members = read_tar(root / "caption" / "shard-00001.tar")
    rewrite_tar(root, "caption", 1, members[:-1] + [(members[-1][0], b'["changed caption"]')])
    dataset = MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache")
    assert dataset[5]["caption"] == ["changed caption"]
    assert len(list((tmp_path / "cache" / "shard_index").glob("shard-index-*.json"))) == 2


def test_index_member_offsets_point_at_member_bytes(tree):
    root, _ = tree
    urls = expand_shard_pattern(pattern_of(root, ["rgb", "det"]))
    index = ShardIndex.build(urls, fsspec.filesystem("file"))
    members = read_tar(root / "det" / "shard-00002.tar")
    for position, (_, data) in enumerate(members):
        location = index.member(2, "det", f"{6 + position:08d}")
        assert location.extension == "det.json" and location.url == urls["det"][2]
        with open(location.url, "rb") as file:
            file.seek(location.offset)
            assert file.read(location.size) == data


def test_locate_out_of_range(tree, tmp_path):
    root, _ = tree
    dataset = MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache")
    with pytest.raises(IndexError, match="out of range"):
        dataset[9]


# ---------------------------------------------------------------- samples


def test_getitem_decodes_every_modality_as_written(tree, tmp_path):
    root, expected = tree
    dataset = MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache")
    for sample_id in range(len(dataset)):
        assert_sample_equal(dataset[sample_id], expected[sample_id])
    assert dataset.skips.total == 0
    assert_sample_equal(pickle.loads(pickle.dumps(dataset))[7], expected[7])  # DataLoader workers get a copy


def test_modality_subset_and_rename(tree, tmp_path):
    root, expected = tree
    dataset = MultimodalShards(
        pattern_of(root), modalities=["caption", "rgb"], rename={"rgb": "image"}, cache_dir=tmp_path / "cache"
    )
    sample = dataset[4]
    assert list(sample) == ["caption", "image"]
    assert torch.equal(sample["image"], expected[4]["rgb"])


@pytest.mark.parametrize(
    "modalities, rename, message",
    [
        (["rgb", "flow"], None, "not in the shard pattern"),
        (["rgb"], {"depth": "d"}, "not loaded"),
        (["rgb", "depth"], {"rgb": "depth"}, "same name"),
    ],
)
def test_bad_modality_selection(tree, tmp_path, modalities, rename, message):
    root, _ = tree
    with pytest.raises(ValueError, match=message):
        MultimodalShards(pattern_of(root), modalities=modalities, rename=rename, cache_dir=tmp_path / "cache")


def test_missing_shard_file_is_named(tree, tmp_path):
    root, _ = tree
    with pytest.raises(FileNotFoundError, match="shard-00003.tar"):
        MultimodalShards(pattern_of(root, shards=4), cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- bad data


def assert_missing_member(dataset: MultimodalShards, sample_id: int, modality: str, key: str) -> None:
    with pytest.raises(SampleError) as caught:
        dataset[sample_id]
    assert caught.value.reason == "missing_member" and caught.value.sample_id == sample_id
    assert f"{modality}/shard-" in caught.value.detail and repr(key) in caught.value.detail


def test_modalities_are_aligned_by_key_not_position(tree, tmp_path):
    root, expected = tree
    members = read_tar(root / "depth" / "shard-00001.tar")
    rewrite_tar(root, "depth", 1, [members[0], members[2], members[1]])
    dataset = MultimodalShards(pattern_of(root, ["rgb", "depth"]), cache_dir=tmp_path / "cache")
    assert [dataset.index.locate(i)[1] for i in range(9)] == [f"{i:08d}" for i in range(9)]  # rgb's order
    for sample_id in range(9):
        sample = dataset[sample_id]
        assert torch.equal(sample["rgb"], expected[sample_id]["rgb"])
        assert torch.equal(sample["depth"], expected[sample_id]["depth"])


@pytest.mark.parametrize("dropped", [1, 2])  # a key inside the tar, or its last key (the tar is complete)
def test_key_missing_from_one_tar_is_a_missing_member_sample(tree, tmp_path, dropped):
    root, expected = tree
    members = read_tar(root / "label" / "shard-00001.tar")
    rewrite_tar(root, "label", 1, members[:dropped] + members[dropped + 1 :])
    dataset = MultimodalShards(pattern_of(root, ["rgb", "label"]), cache_dir=tmp_path / "cache")
    keys = [dataset.index.locate(i)[1] for i in range(len(dataset))]
    assert keys == [f"{i:08d}" for i in range(9)]
    assert_missing_member(dataset, 3 + dropped, "label", f"{3 + dropped:08d}")
    for sample_id in set(range(9)) - {3 + dropped}:
        assert dataset[sample_id]["label"] == expected[sample_id]["label"]
    assert dataset.skips.total == 0  # counted when read, by the loader
    # The sample order does not depend on which modality is listed first.
    swapped = MultimodalShards(pattern_of(root, ["label", "rgb"]), cache_dir=tmp_path / "cache")
    assert [swapped.index.locate(i)[1] for i in range(len(swapped))] == keys


def test_key_only_some_modalities_have_is_a_sample_the_others_lack(tree, tmp_path):
    root, _ = tree
    members = read_tar(root / "rgb" / "shard-00000.tar")
    rewrite_tar(root, "rgb", 0, [members[0], members[2]])
    extra = ("00000099.caption.json", b'["only a caption"]')
    captions = read_tar(root / "caption" / "shard-00000.tar")
    rewrite_tar(root, "caption", 0, [*captions, extra])
    dataset = MultimodalShards(pattern_of(root, ["rgb", "depth", "caption"]), cache_dir=tmp_path / "cache")
    assert [dataset.index.locate(i) for i in range(5)] == [
        (0, "00000000"),
        (0, "00000001"),  # after its predecessor in depth, not at the end
        (0, "00000002"),
        (0, "00000099"),
        (1, "00000003"),
    ]
    assert len(dataset) == 10
    assert_missing_member(dataset, 1, "rgb", "00000001")
    assert_missing_member(dataset, 3, "rgb", "00000099")


@pytest.mark.parametrize(
    "orders, merged",
    [
        ([["a", "b", "c"], ["a", "b", "c"]], ["a", "b", "c"]),
        ([["a", "c", "e"], ["a", "b", "c", "d", "e", "f"]], ["a", "b", "c", "d", "e", "f"]),
        ([["c", "a"], ["x", "y", "a", "z"], ["w", "c", "v"]], ["x", "y", "w", "c", "v", "a", "z"]),
        ([[], ["b", "a"]], ["b", "a"]),
    ],
)
def test_merge_key_orders(orders, merged):
    assert shard_index_module.merge_key_orders(orders) == merged


def test_modality_sharing_no_key_is_an_error_naming_shard_and_keys(tree, tmp_path):
    root, _ = tree
    rewrite_tar(root, "depth", 1, read_tar(root / "depth" / "shard-00002.tar"))  # wrong shard numbering
    with pytest.raises(ValueError) as caught:
        MultimodalShards(pattern_of(root, ["rgb", "caption", "depth"]), cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "shard 1 (" in message and "depth/shard-00001.tar" in message
    assert "modality 'depth' shares no key with ['rgb', 'caption']" in message
    assert "rgb: ['00000003', '00000004', '00000005']" in message
    assert "depth: ['00000006', '00000007', '00000008']" in message


def test_mostly_mismatched_shard_is_an_error(tree, tmp_path):
    root, _ = tree
    rewrite_tar(root, "label", 2, read_tar(root / "label" / "shard-00002.tar")[:1])
    with pytest.raises(ValueError, match=r"shard 2 .*2 of 3 keys are missing from a complete tar \(label lacks 2"):
        MultimodalShards(pattern_of(root, ["rgb", "label"]), cache_dir=tmp_path / "cache")


def test_index_cached_in_an_older_format_is_rebuilt_not_misread(tree, tmp_path, monkeypatch):
    root, expected = tree
    cache = tmp_path / "cache"
    members = read_tar(root / "depth" / "shard-00001.tar")
    rewrite_tar(root, "depth", 1, [members[0], members[2]])
    MultimodalShards(pattern_of(root, ["rgb", "depth"]), cache_dir=cache)
    (cache_file,) = (cache / "shard_index").glob("shard-index-*.json")
    payload = json.loads(cache_file.read_text())
    for shard in payload["shards"]:  # format 1 listed each tar's members without gaps: misaligned here
        shard["members"] = {m: [e for e in entries if e is not None] for m, entries in shard["members"].items()}
    for stale_format in (1, None):
        payload["format"] = stale_format
        cache_file.write_text(json.dumps(payload))
        dataset = MultimodalShards(pattern_of(root, ["rgb", "depth"]), cache_dir=cache)
        assert_missing_member(dataset, 4, "depth", "00000004")
        assert torch.equal(dataset[5]["depth"], expected[5]["depth"])
        assert json.loads(cache_file.read_text())["format"] == shard_index_module.INDEX_FORMAT
    # The format is part of the cache name too, so an index of another format is not even opened.
    monkeypatch.setattr(shard_index_module, "INDEX_FORMAT", shard_index_module.INDEX_FORMAT + 1)
    MultimodalShards(pattern_of(root, ["rgb", "depth"]), cache_dir=cache)
    assert len(list((cache / "shard_index").glob("shard-index-*.json"))) == 2


def test_corrupt_png_raises_sample_error(tree, tmp_path):
    root, expected = tree
    members = read_tar(root / "rgb" / "shard-00000.tar")
    name, data = members[1]
    members[1] = (name, data[:40] + bytes(len(data) - 40))  # valid signature and header, garbage pixels
    rewrite_tar(root, "rgb", 0, members)
    dataset = MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache")
    with pytest.raises(SampleError) as caught:
        dataset[1]
    assert caught.value.reason == "corrupt_image" and caught.value.sample_id == 1
    assert "00000001.rgb.png" in caught.value.detail
    assert_sample_equal(dataset[2], expected[2])


def truncate(path: Path, keep_members: int, inside_data: bool) -> None:
    """Cut a tar inside the data of member ``keep_members`` or just before its header."""
    with tarfile.open(path) as archive:
        cut_member = archive.getmembers()[keep_members]
    end = cut_member.offset_data + cut_member.size // 2 if inside_data else cut_member.offset
    path.write_bytes(path.read_bytes()[:end])


@pytest.mark.parametrize("inside_data", [True, False])
def test_truncated_tar_indexes_complete_prefix_and_counts(tree, tmp_path, inside_data):
    root, expected = tree
    truncate(root / "depth" / "shard-00001.tar", keep_members=1, inside_data=inside_data)
    dataset = MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache", error_budget=5)
    assert len(dataset) == 9
    assert dataset.skips.counts == {"truncated_tar": 1}
    assert list(dataset.index.truncated) == [str(root / "depth" / "shard-00001.tar")]
    assert_sample_equal(dataset[3], expected[3])
    for sample_id in (4, 5):
        with pytest.raises(SampleError) as caught:
            dataset[sample_id]
        assert caught.value.reason == "missing_member" and "depth" in caught.value.detail
    cached = MultimodalShards(pattern_of(root), cache_dir=tmp_path / "cache", error_budget=5)
    assert cached.skips.counts == {"truncated_tar": 1}


def test_truncated_member_read(tree, tmp_path):
    root, _ = tree
    dataset = MultimodalShards(pattern_of(root, ["caption"]), cache_dir=tmp_path / "cache")
    path = root / "caption" / "shard-00002.tar"
    location = dataset.index.member(2, "caption", "00000008")
    path.write_bytes(path.read_bytes()[: location.offset + 3])  # shrunk after indexing
    with pytest.raises(SampleError) as caught:
        dataset[8]
    assert caught.value.reason == "truncated_member"


# ---------------------------------------------------------------- decoding and skip counting


def test_decode_rules_by_name_and_extension():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert decode_member("edges", "png", png_bytes(grey)).shape == (1, 3, 4)
    assert decode_member("tok_semseg", "png", png_bytes(grey)).dtype == torch.int64
    codes = decode_member("tok_depth", "npy", npy_bytes(grey.astype(np.int16)))
    assert codes.dtype == torch.int16 and codes.shape == grey.shape
    assert torch.equal(
        decode_member("tok_rgb", "npy", npy_bytes(grey.astype(np.int16))), torch.from_numpy(grey.astype(np.int16))
    )
    empty = decode_member("det", "json", b'{"boxes": [], "labels": []}')
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert decode_member("caption", "txt", b" a red cube \n") == "a red cube"


@pytest.mark.parametrize(
    "modality, extension, data, reason",
    [
        ("label", "txt", b"three", "corrupt_text"),
        ("depth", "npy", b"\x93NUMPY garbage", "corrupt_array"),
        ("caption", "json", b"[unterminated", "corrupt_json"),
        ("det", "json", b'{"boxes": [[0, 0, 1, 1]], "labels": []}', "corrupt_json"),
        ("rgb", "png", b"not a png", "corrupt_image"),
    ],
)
def test_decode_errors_carry_reason(modality, extension, data, reason):
    with pytest.raises(ValueError) as caught:
        decode_member(modality, extension, data)
    assert caught.value.reason == reason


def test_decode_rejects_pickled_npy_and_unknown_extension():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError) as caught:
        decode_member("depth", "npy", buffer.getvalue())
    assert caught.value.reason == "corrupt_array"
    with pytest.raises(ValueError, match="no decoder for extension 'webp'"):
        decode_member("rgb", "webp", b"")


def test_skip_counter():
    counter = SkipCounter(budget=2)
    counter.record(SampleError("corrupt_image", 3, "x"))
    counter.add("missing_member", "y")
    assert counter.counts == {"corrupt_image": 1, "missing_member": 1} and not counter.over_budget()
    counter.add("corrupt_image", "z")
    assert counter.over_budget()
    assert counter.message() == "skipped 3 samples (budget 2): corrupt_image=2, missing_member=1"
    with pytest.raises(ValueError, match="budget"):
        SkipCounter(budget=-1)
