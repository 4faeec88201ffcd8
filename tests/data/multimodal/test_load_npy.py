"""``load_npy`` gives exactly what ``np.load(..., allow_pickle=False)`` gives, parses each distinct header once, and
turns every kind of damaged ``.npy`` into a ``corrupt_array`` skip."""

import io

import numpy as np
import pytest
import torch

from polymodal.data.multimodal.decode import DecodeError, decode_member, load_npy, npy_layout


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def with_header(header: str, payload: bytes = b"") -> bytes:
    """A version 1.0 file with a hand-written header dict (padded as numpy pads it)."""
    text = header + " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1") + payload


ARRAYS = {
    "int16 codes": np.arange(64, dtype=np.int16).reshape(8, 8),
    "float32 depth": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4),
    "fortran order": np.asfortranarray(np.arange(24, dtype=np.int64).reshape(2, 3, 4)),
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 5), dtype=np.uint8),
    "bool": np.array([[True, False], [False, True]]),
    "float16": np.array([1.5, -2.25], dtype=np.float16),
    "big-endian": np.arange(6, dtype=">i4").reshape(2, 3),
}


@pytest.mark.parametrize("name", ARRAYS)
@pytest.mark.parametrize("version", [None, (2, 0), (3, 0)], ids=["default", "v2", "v3"])
def test_equals_numpy(name, version):
    data = npy(ARRAYS[name], version)
    got, expected = load_npy(data), np.load(io.BytesIO(data), allow_pickle=False)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous and got.flags.writeable


def test_the_array_is_a_copy_of_the_bytes():
    data = bytearray(npy(np.arange(4, dtype=np.int32)))
    array = load_npy(bytes(data))
    array[0] = 99
    np.testing.assert_array_equal(load_npy(bytes(data)), [0, 1, 2, 3])


def test_one_header_is_parsed_once():
    npy_layout.cache_clear()
    for seed in range(5):
        load_npy(npy(np.random.default_rng(seed).integers(0, 1000, (8, 8)).astype(np.int16)))
    info = npy_layout.cache_info()
    assert (info.misses, info.hits) == (1, 4)


def test_trailing_bytes_are_ignored_as_numpy_ignores_them():
    data = npy(np.arange(3, dtype=np.int64)) + b"\0" * 7
    np.testing.assert_array_equal(load_npy(data), np.load(io.BytesIO(data), allow_pickle=False))


def object_array() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, message",
    [
        (npy(np.arange(16, dtype=np.int16))[:-5], "truncated array: 32 bytes of data expected, 27 found"),
        (object_array(), "allow_pickle=False"),
        (with_header("{'descr': '<i2', 'fortran_order': False, 'shape': (-1,), }", b"\0" * 8), "negative size"),
        (with_header("{'descr': '<i2', 'fortran_order': False, 'shape': (2,), 'x': __import__('os')}"), "malformed"),
        (npy(np.arange(4))[:12], "EOF"),  # the header itself is cut
        (b"\x93NUMPY\x07\x00garbage", "version"),
        (b"\x93NUMPY", "EOF"),
        (b"PK\x03\x04 a zip, not an array", "not an .npy array"),
    ],
    ids=["truncated-data", "objects", "negative-shape", "code-in-header", "truncated-header", "version-7", "magic-only",
         "not-npy"],
)  # fmt: skip
def test_damaged_arrays_are_corrupt_array_skips(data, message):
    with pytest.raises(DecodeError, match=message) as caught:
        decode_member("tok_depth", "npy", data)
    assert caught.value.reason == "corrupt_array"


def test_depth_maps_still_become_float_channels():
    depth = decode_member("depth", "npy", npy(np.ones((4, 5), dtype=np.float16)))
    assert depth.dtype == torch.float32 and depth.shape == (1, 4, 5)
