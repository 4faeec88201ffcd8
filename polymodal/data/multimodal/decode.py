"""Bytes of one shard member -> the in-memory value of its modality.

The member extension picks the format; the on-disk modality name (the shard folder, before any renaming)
refines images, arrays and text by its suffix:

=============  ==========================================================================================
extension      value
=============  ==========================================================================================
png/jpg/jpeg   uint8 ``[C,H,W]`` (grey -> ``[1,H,W]``, colour -> ``[3,H,W]``). Names ending in ``rgb``: always
               ``[3,H,W]`` (a grey or palette image is converted, not skipped: it is still a valid picture).
               Names ending in ``semseg``: int64 class map ``[H,W]``. Names ending in ``normal``: float32
               ``[3,H,W]`` in [-1, 1] (stored as ``(n + 1) / 2 * 255``).
npy            the array as a tensor (``allow_pickle=False``); names ending in ``depth``: a ``[H,W]``
               map becomes float32 ``[1,H,W]``.
json           the JSON value; names ending in ``det``: ``{"boxes": float32 [N,4], "labels": int64 [N]}``.
txt            the stripped string; names ending in ``label``: an int64 scalar tensor.
=============  ==========================================================================================

Arrays in pre-tokenized folders (``tok_<modality>``) are codes: ``tok_depth`` arrays stay as stored.

Undecodable bytes raise :class:`DecodeError` with a reason tag; an unknown extension is a ``ValueError``
(a configuration problem, not a bad sample). An image whose header declares more than :data:`MAX_IMAGE_PIXELS`
pixels is ``too_large`` and is never decoded (nor is a decompression bomb, which PIL refuses to open): one such
image would hold a worker's memory and time for a few dozen output pixels; pre-resize such data. A colour image
where a class map is expected is ``wrong_mode``.
"""

from __future__ import annotations

import functools
import io
import json
import math
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

TOKEN_FOLDER_PREFIX = "tok_"

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
MAX_IMAGE_PIXELS = 4096 * 4096


class DecodeError(ValueError):
    """The member's bytes are not a valid value of its format; ``reason`` tags the kind of damage."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def decode_pixels(source: str | Path | IO[bytes], where: str, mode: str | None = None) -> np.ndarray:
    """The pixels of an image file as ``[H,W]`` (grey) or ``[H,W,3]`` uint8, converted to ``mode`` if given (else
    grey stays grey and any other mode becomes RGB); images over :data:`MAX_IMAGE_PIXELS` are not decoded."""
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                detail = f"{image.width}x{image.height} pixels is more than MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS}"
                raise DecodeError("too_large", f"{where}: {detail}")
            image.load()
            target = mode or (image.mode if image.mode in ("L", "RGB") else "RGB")
            return np.asarray(image if image.mode == target else image.convert(target))
    except Image.DecompressionBombError as error:
        raise DecodeError("too_large", f"{where}: {error}") from error
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports damage through all three
        raise DecodeError("corrupt_image", f"{where}: {error}") from error


def decode_image(modality: str, data: bytes) -> torch.Tensor:
    pixels = decode_pixels(io.BytesIO(data), modality, "RGB" if modality.endswith("rgb") else None)
    if modality.endswith("semseg"):
        if pixels.ndim != 2:
            raise DecodeError("wrong_mode", f"{modality}: class map must be a grey image, got {pixels.shape}")
        return torch.from_numpy(pixels.astype(np.int64))
    tensor = torch.from_numpy(pixels.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
    if modality.endswith("normal"):
        return tensor.float() / 255.0 * 2.0 - 1.0
    return tensor


NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_LENGTH_BYTES = {1: 2, 2: 4}  # format version -> width of the little-endian header length


@functools.lru_cache(maxsize=256)
def npy_layout(preamble: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of an ``.npy`` preamble (magic, version, header), parsed by numpy.

    Cached on the preamble's bytes: the arrays of one modality share a header, and numpy parses it with
    ``ast.literal_eval``, which costs more than copying a small array."""
    stream = io.BytesIO(preamble)
    major, _ = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read_header(stream)


def load_npy(data: bytes) -> np.ndarray:
    """``np.load(io.BytesIO(data), allow_pickle=False)`` of an ``.npy`` file, C-contiguous, with the header parsed once
    per distinct header. Anything else is a ``ValueError`` (``np.load`` would open a zip as an ``.npz``)."""
    if not data.startswith(NPY_MAGIC):
        raise ValueError(f"not an .npy array: it starts with {data[:8]!r}, not {NPY_MAGIC!r}")
    length_bytes = _NPY_HEADER_LENGTH_BYTES.get(data[6]) if len(data) > 6 else None
    if length_bytes is None:  # a format version numpy parses differently (or none): numpy reads it or says why
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), order="C")
    header_start = 8 + length_bytes
    offset = header_start + int.from_bytes(data[8:header_start], "little")
    shape, fortran_order, dtype = npy_layout(data[:offset])
    if dtype.hasobject:
        raise ValueError("the array holds Python objects, which are not loaded (allow_pickle=False)")
    if any(size < 0 for size in shape):
        raise ValueError(f"negative size in the array's shape {shape}")
    count, stored = math.prod(shape), len(data) - offset
    if stored < count * dtype.itemsize:
        raise ValueError(f"truncated array: {count * dtype.itemsize} bytes of data expected, {stored} found")
    flat = np.frombuffer(data, dtype, count, offset)
    return np.array(flat.reshape(shape, order="F" if fortran_order else "C"), order="C")  # a writable copy


def decode_array(modality: str, data: bytes) -> torch.Tensor:
    try:
        array = load_npy(data)
    except (OSError, ValueError, EOFError) as error:
        raise DecodeError("corrupt_array", f"{modality}: {error}") from error
    tensor = torch.from_numpy(array)
    if modality.endswith("depth") and not modality.startswith(TOKEN_FOLDER_PREFIX) and tensor.ndim == 2:
        return tensor.float().unsqueeze(0)
    return tensor


def decode_detections(modality: str, value: Any) -> dict[str, torch.Tensor]:
    try:
        boxes = torch.tensor(value["boxes"], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(value["labels"], dtype=torch.int64).reshape(-1)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise DecodeError("corrupt_json", f"{modality}: bad detections {error!r}") from error
    if len(boxes) != len(labels):
        raise DecodeError("corrupt_json", f"{modality}: {len(boxes)} boxes but {len(labels)} labels")
    return {"boxes": boxes, "labels": labels}


def decode_json(modality: str, data: bytes) -> Any:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecodeError("corrupt_json", f"{modality}: {error}") from error
    return decode_detections(modality, value) if modality.endswith("det") else value


def decode_text(modality: str, data: bytes) -> str | torch.Tensor:
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise DecodeError("corrupt_text", f"{modality}: {error}") from error
    if not modality.endswith("label"):
        return text
    try:
        return torch.tensor(int(text), dtype=torch.int64)
    except ValueError as error:
        raise DecodeError("corrupt_text", f"{modality}: label {text[:40]!r} is not an integer") from error


def decode_member(modality: str, extension: str, data: bytes) -> Any:
    """Decode one member's bytes; ``extension`` is the last part of the member name (``png`` in ``rgb.png``)."""
    extension = extension.lower()
    if extension in IMAGE_EXTENSIONS:
        return decode_image(modality, data)
    if extension == "npy":
        return decode_array(modality, data)
    if extension == "json":
        return decode_json(modality, data)
    if extension == "txt":
        return decode_text(modality, data)
    raise ValueError(
        f"modality {modality!r}: no decoder for extension {extension!r}; "
        f"supported: {', '.join((*IMAGE_EXTENSIONS, 'npy', 'json', 'txt'))}"
    )
