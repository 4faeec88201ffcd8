"""One token shard: the sequences of a chunk of conversations in one memory-mappable safetensors file.

=============  ===========================  ============================================================
tensor         dtype, shape                 meaning
=============  ===========================  ============================================================
``tokens``     uint16 or uint32 ``[T]``     every item's token ids, one after the other
``labels``     uint8 ``[ceil(T / 8)]``      ``numpy.packbits`` of the label mask: bit ``t`` is set when
                                            token ``t`` is a training target (assistant turns)
``offsets``    uint32 ``[n + 1]``           item ``k`` is ``tokens[offsets[k]:offsets[k + 1]]``
``item_index`` uint32 ``[n]``               each item's position in the input file
=============  ===========================  ============================================================

The file is the safetensors format, written here rather than by the ``safetensors`` package because that one orders
its header from a hash map, so the bytes would differ from run to run; ours sorts it, which makes a shard a pure
function of its chunk. The metadata holds the manifest hash, the chunk's place (rank, chunk) and the chunk's per-item
errors as JSON. A shard is written atomically once its chunk is finished, so its existence marks the chunk done. About
``2 + 1/8`` bytes per token when ids fit in 16 bits.

Reading maps the file once and hands out numpy views (no copy, no parse per item); the header layout is the
safetensors format (8-byte little-endian header length, JSON header, data).
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.files import atomic_output

_SAFETENSORS_DTYPES = {"U8": np.uint8, "U16": np.uint16, "U32": np.uint32}
_DTYPE_NAMES = {np.dtype(dtype): name for name, dtype in _SAFETENSORS_DTYPES.items()}
_TENSORS = ("tokens", "labels", "offsets", "item_index")
_INDEX_MAX = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class ItemError:
    """Why one input item was left out: ``reason`` is one of the pre-tokenizer's reason names."""

    index: int
    item_id: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.item_id, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class TokenSequence:
    """One item's token ids and label mask (True = trained)."""

    item_index: int
    tokens: np.ndarray
    labels: np.ndarray


def write_shard(
    path: str | Path,
    sequences: Sequence[TokenSequence],
    errors: Sequence[ItemError],
    token_dtype: np.dtype,
    metadata: dict[str, str],
) -> Path:
    """Write the chunk's ``sequences`` and ``errors`` as one shard, atomically."""
    lengths = np.array([len(s.tokens) for s in sequences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate([s.tokens for s in sequences]) if sequences else np.zeros(0, np.int64)
    labels = np.concatenate([s.labels for s in sequences]) if sequences else np.zeros(0, bool)
    item_index = np.array([s.item_index for s in sequences], dtype=np.int64)
    if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(token_dtype).max):
        raise ValueError(f"token ids [{tokens.min()}, {tokens.max()}] do not fit {token_dtype}")
    if offsets[-1] > _INDEX_MAX or (len(item_index) and item_index.max() > _INDEX_MAX):
        raise ValueError(f"a shard indexes at most {_INDEX_MAX} tokens and input positions (uint32)")
    arrays = {
        "tokens": tokens.astype(token_dtype),
        "labels": np.packbits(labels.astype(bool)),
        "offsets": offsets.astype(np.uint32),
        "item_index": item_index.astype(np.uint32),
    }
    errors_json = json.dumps([e.to_dict() for e in errors], ensure_ascii=False)
    target = Path(path)
    with atomic_output(target) as tmp:
        _save_safetensors(tmp, arrays, {**metadata, "errors": errors_json})
    return target


def _save_safetensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """The safetensors layout with a sorted header (the same bytes for the same arrays, in every process)."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        header[name] = {
            "dtype": _DTYPE_NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for name in sorted(arrays):
            handle.write(np.ascontiguousarray(arrays[name]).tobytes())


class MappedShard:
    """Read-only views of a shard file (see the module docstring); ValueError for a damaged one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            header, data_start = self._header()
            self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
            arrays = {name: self._array(header, name, data_start) for name in _TENSORS}
        except (ValueError, KeyError, TypeError, struct.error) as error:
            self._map.close()
            raise ValueError(f"token shard {self.path} is damaged or not a shard: {error}") from error
        self.tokens, self._label_bits, self.offsets, self.item_index = (arrays[name] for name in _TENSORS)
        self._check()
        self._offsets = memoryview(self.offsets).cast("B").cast("I")  # Python ints without a copy: fast item()

    def _header(self) -> tuple[dict[str, Any], int]:
        (length,) = struct.unpack("<Q", self._map[:8])
        if not 0 < length <= len(self._map) - 8:
            raise ValueError(f"header length {length} does not fit a file of {len(self._map)} bytes")
        return json.loads(self._map[8 : 8 + length]), 8 + length

    def _array(self, header: dict[str, Any], name: str, data_start: int) -> np.ndarray:
        entry = header[name]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        begin, end = entry["data_offsets"]
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if end - begin != count * dtype.itemsize or data_start + end > len(self._map):
            raise ValueError(f"tensor {name} does not fit the file")
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=data_start + begin)

    def _check(self) -> None:
        n, total = len(self.item_index), len(self.tokens)
        if len(self.offsets) != n + 1 or self.offsets[0] != 0 or self.offsets[-1] != total:
            raise ValueError(f"token shard {self.path}: offsets do not index its {total} tokens")
        if len(self._label_bits) != (total + 7) // 8:
            raise ValueError(f"token shard {self.path}: the label mask does not match its {total} tokens")

    def __len__(self) -> int:
        return len(self.item_index)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets.astype(np.int64))

    @property
    def errors(self) -> list[ItemError]:
        return [ItemError(e["index"], e["id"], e["reason"], e["detail"]) for e in json.loads(self.metadata["errors"])]

    def item(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (a view) and the bool label mask of the shard's ``k``-th item."""
        begin, end = self._offsets[k], self._offsets[k + 1]
        first_byte = begin >> 3
        bits = np.unpackbits(self._label_bits[first_byte : (end + 7) >> 3])
        return self.tokens[begin:end], bits[begin - (first_byte << 3) : end - (first_byte << 3)].view(bool)

    def all_labels(self) -> np.ndarray:
        return np.unpackbits(self._label_bits, count=len(self.tokens)).astype(bool)
