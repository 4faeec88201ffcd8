"""DCP metadata as JSON, so that opening a checkpoint never unpickles.

torch's ``FileSystemReader`` reads a checkpoint's ``.metadata`` with ``pickle.load``: a crafted file runs code.
:class:`JsonMetadataWriter` writes the same description as ``metadata.json`` beside it, and
:class:`JsonMetadataReader` rebuilds torch's ``Metadata`` from that JSON and never opens ``.metadata``. The tensor
payload (``*.distcp``) is read by torch with ``torch.load(weights_only=True)``, which only rebuilds tensors; the JSON
can describe nothing but tensors, as DCP reads any other entry with ``torch.load(weights_only=False)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from polymodal.checkpoint.errors import CheckpointError

METADATA_JSON = "metadata.json"


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"{METADATA_JSON} names an unknown dtype {name!r}")
    return dtype


def _storage_to_json(fqn: str, meta: TensorStorageMetadata | BytesStorageMetadata) -> dict[str, Any]:
    if not isinstance(meta, TensorStorageMetadata):  # polymodal puts only tensors through DCP
        raise TypeError(f"{fqn} is not a tensor; only tensors are checkpointed through DCP")
    return {
        "dtype": str(meta.properties.dtype),
        "size": list(meta.size),
        "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in meta.chunks],
    }


def _storage_from_json(entry: dict[str, Any]) -> TensorStorageMetadata:
    """Always a tensor: DCP loads a non-tensor (``BytesStorageMetadata``) entry with ``torch.load(weights_only=False)``,
    so a description that could yield one is refused (a missing field raises KeyError)."""
    chunks = [ChunkStorageMetadata(torch.Size(c["offsets"]), torch.Size(c["sizes"])) for c in entry["chunks"]]
    return TensorStorageMetadata(TensorProperties(dtype=_dtype(entry["dtype"])), torch.Size(entry["size"]), chunks)


def metadata_to_json(metadata: Metadata) -> dict[str, Any]:
    """What loading needs of DCP's ``Metadata``: tensors, their chunks, and where each chunk is stored."""
    return {
        "version": metadata.version,
        "tensors": {fqn: _storage_to_json(fqn, meta) for fqn, meta in metadata.state_dict_metadata.items()},
        "planner_data": {fqn: list(path) for fqn, path in (metadata.planner_data or {}).items()},
        "storage": [
            {
                "fqn": index.fqn,
                "offset": None if index.offset is None else list(index.offset),
                "index": index.index,
                "file": info.relative_path,
                "start": info.offset,
                "length": info.length,
                "transforms": list(info.transform_descriptors or []),
            }
            for index, info in metadata.storage_data.items()
        ],
    }


def metadata_from_json(payload: dict[str, Any]) -> Metadata:
    """The ``Metadata`` that :func:`metadata_to_json` described."""
    storage = {
        MetadataIndex(entry["fqn"], entry["offset"], entry["index"]): _StorageInfo(
            relative_path=str(entry["file"]),
            offset=int(entry["start"]),
            length=int(entry["length"]),
            transform_descriptors=[str(t) for t in entry["transforms"]] or None,
        )
        for entry in payload["storage"]
    }
    return Metadata(
        state_dict_metadata={fqn: _storage_from_json(entry) for fqn, entry in payload["tensors"].items()},
        planner_data={fqn: tuple(path) for fqn, path in payload["planner_data"].items()},
        storage_data=storage,
        storage_meta=StorageMeta(),
        version=payload["version"],
    )


class JsonMetadataWriter(FileSystemWriter):
    """torch's writer, also writing :data:`METADATA_JSON` (the coordinator calls ``finish`` once per save)."""

    def finish(self, metadata: Metadata, results: list) -> None:
        super().finish(metadata, results)
        Path(self.path, METADATA_JSON).write_text(json.dumps(metadata_to_json(metadata)))


class JsonMetadataReader(FileSystemReader):
    """torch's reader with the metadata taken from :data:`METADATA_JSON`; ``.metadata`` is never opened."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return read_json_metadata(Path(self.path), self.load_id)


def refuse_without_json_metadata(checkpoint: Path) -> None:
    """A checkpoint without :data:`METADATA_JSON` (written by an older polymodal) could only be opened by
    unpickling: refuse it in one line."""
    if not (Path(checkpoint) / METADATA_JSON).is_file():
        raise CheckpointError(
            f"{checkpoint} has no {METADATA_JSON} (written by an older polymodal): its metadata could only be read by "
            f"unpickling, which can run code, so it is not opened; export it with the polymodal that wrote it"
        )


def read_json_metadata(checkpoint: Path, load_id: str | None = None) -> Metadata:
    """The checkpoint's DCP metadata, from its JSON."""
    refuse_without_json_metadata(checkpoint)
    file = Path(checkpoint) / METADATA_JSON
    try:
        metadata = metadata_from_json(json.loads(file.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{file} is not valid checkpoint metadata ({error})") from error
    metadata.storage_meta.load_id = load_id
    return metadata
