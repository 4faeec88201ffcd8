"""MemberReader: local shards are read with pread on kept-open descriptors (bounded, per process, never pickled);
the bytes equal a plain read, a read past the end comes back short, remote filesystems keep range requests."""

import os
import pickle
import random
from pathlib import Path

import fsspec
import pytest

from polymodal.data.multimodal.member_reader import MemberReader


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def shard_files(tmp_path) -> list[Path]:
    generator = random.Random(0)
    paths = []
    for index in range(5):
        path = tmp_path / f"shard-{index:05d}.tar"
        path.write_bytes(bytes(generator.randrange(256) for _ in range(4096)))
        paths.append(path)
    return paths


def test_reads_equal_a_plain_read_and_keep_at_most_max_open_descriptors(shard_files):
    reader = MemberReader(fsspec.filesystem("file"), max_open=2)
    before = open_descriptors()
    generator = random.Random(1)
    for _ in range(50):
        path = generator.choice(shard_files)
        offset, size = generator.randrange(4000), generator.randrange(1, 96)
        assert reader.read(str(path), offset, size) == path.read_bytes()[offset : offset + size]
        assert open_descriptors() - before <= 2
    assert reader.read(f"file://{shard_files[0]}", 10, 5) == shard_files[0].read_bytes()[10:15]  # URLs work too
    reader.close()
    assert open_descriptors() == before


def test_a_read_past_the_end_is_short(shard_files):
    reader = MemberReader(fsspec.filesystem("file"))
    assert reader.read(str(shard_files[0]), 4090, 100) == shard_files[0].read_bytes()[4090:]  # 6 bytes: truncated


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        MemberReader(fsspec.filesystem("file")).read(str(tmp_path / "gone.tar"), 0, 10)


def test_a_pickled_reader_carries_no_descriptors_and_opens_its_own(shard_files):
    reader = MemberReader(fsspec.filesystem("file"))
    reader.read(str(shard_files[0]), 0, 10)
    copy = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker receives
    before = open_descriptors()
    del copy  # closing a copy closes nothing of the original's
    assert open_descriptors() == before
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.read(str(shard_files[1]), 100, 20) == shard_files[1].read_bytes()[100:120]
    assert open_descriptors() == before + 1
    assert reader.read(str(shard_files[0]), 0, 10) == shard_files[0].read_bytes()[:10]  # the original's still works


def test_remote_filesystems_keep_range_requests(shard_files):
    memory = fsspec.filesystem("memory")
    memory.pipe("/shards/a.tar", shard_files[0].read_bytes())
    reader = MemberReader(memory)
    assert not reader.local
    assert reader.read("memory://shards/a.tar", 7, 9) == shard_files[0].read_bytes()[7:16]
