"""MultimodalShards over s3:// against a real S3-compatible server (moto in server mode on localhost)."""

from pathlib import Path

import pytest
import torch
from parallel_runs import free_port

from polymodal.data.multimodal import MultimodalShards, SampleError
from polymodal.data.multimodal import shard_index as shard_index_module

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from test_shards import MODALITIES, assert_sample_equal, pattern_of, read_tar, rewrite_tar, write_shard_tree  # noqa: E402

BUCKET = "polymodal-shards"
CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_tree(endpoint, tmp_path, monkeypatch):
    """A shard tree (with one corrupt rgb member) uploaded to the bucket; returns its s3 root and expected values."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    local = tmp_path / "tree"
    expected = write_shard_tree(local, shards=2, per_shard=3)
    members = read_tar(local / "rgb" / "shard-00001.tar")
    members[0] = (members[0][0], b"\x89PNG\r\n\x1a\n" + b"broken")
    rewrite_tar(local, "rgb", 1, members)
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(local.rglob("*.tar")):
        client.upload_file(str(path), BUCKET, f"root/{path.relative_to(local).as_posix()}")
    return expected


def s3_dataset(endpoint: str, cache_dir: Path) -> MultimodalShards:
    return MultimodalShards(
        pattern_of(f"s3://{BUCKET}/root", shards=2),
        rename={"rgb": "image"},
        cache_dir=cache_dir,
        storage_options={**CREDENTIALS, "endpoint_url": endpoint, "skip_instance_cache": True},
    )


def test_s3_round_trip_with_cached_index(endpoint, s3_tree, tmp_path, monkeypatch):
    expected = s3_tree
    dataset = s3_dataset(endpoint, tmp_path / "cache")
    assert dataset.index.shards[0].urls["rgb"] == f"s3://{BUCKET}/root/rgb/shard-00000.tar"
    assert len(dataset) == 6 and set(dataset.modalities) == set(MODALITIES)
    for sample_id in (0, 1, 2, 4, 5):
        sample = dataset[sample_id]
        sample["rgb"] = sample.pop("image")
        assert_sample_equal(sample, expected[sample_id])
    with pytest.raises(SampleError) as caught:
        dataset[3]
    assert caught.value.reason == "corrupt_image"

    def no_scan(*args, **kwargs):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(shard_index_module, "scan_tar", no_scan)
    cached = s3_dataset(endpoint, tmp_path / "cache")
    assert torch.equal(cached[5]["image"], expected[5]["rgb"])
