"""Image preparation for the Lumina-mGPT pre-tokenizer: a file -> an upright RGB picture of one resolution bucket.

Lumina-mGPT encodes each image at one of a fixed set of sizes (*buckets*) of about ``target_size²`` pixels whose
sides are multiples of ``patch_size``. An image goes to the bucket closest to its aspect ratio
(:func:`closest_bucket`), is resized to cover it and cropped to it (:func:`fit_to_bucket`).

Differences from upstream, on purpose:

* the crop offset comes from a generator seeded by ``(seed, item, image)`` (:func:`crop_rng`), so re-running
  the pre-tokenizer gives the same tokens whatever the process, batch or order;
* the covering resize rounds up, so the image is never smaller than its bucket;
* EXIF orientation is honoured, transparency is blended onto white, and a file's size is checked from its
  header before any pixel is decoded. A rejected file raises :class:`ImageRejected` with a reason tag.

:func:`read_image_size` reads only the header, to count an item's tokens before decoding anything. It and
:func:`open_image` read the orientation from the same header metadata, so the size they report always agrees;
orientation metadata that a PNG stores after its pixel data (rare) is therefore ignored by both.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image

from polymodal.families.lumina.rejections import Rejected

ImageSource = str | Path | bytes

REJECTION_REASONS = ("missing_image", "unreadable_image", "image_too_large", "image_too_small")

# EXIF orientation -> the transpose that makes the stored pixels upright (as PIL.ImageOps.exif_transpose does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (5, 6, 7, 8)


class ImageRejected(Rejected):
    """An image that cannot be used; ``reason`` is one of :data:`REJECTION_REASONS`, ``detail`` says why."""


def resolution_buckets(target_size: int, patch_size: int, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """The ``(height, width)`` buckets of about ``target_size²`` pixels, sides multiples of ``patch_size``.

    With ``N = (target_size // patch_size)²`` cells, a staircase walk from ``N × 1`` cells (width × height)
    grows the height while the area stays within ``N`` cells and otherwise narrows the width; every step whose
    long side is at most ``max_ratio`` times its short side is a bucket. The list runs from the widest to the
    tallest bucket: along it the width never grows and the height never shrinks, and no bucket repeats.
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if target_size < patch_size or target_size % patch_size:
        raise ValueError(f"target_size must be a positive multiple of patch_size={patch_size}, got {target_size}")
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
    cells = (target_size // patch_size) ** 2
    buckets = []
    wide, high = cells, 1
    while wide > 0:
        if max(wide, high) <= max_ratio * min(wide, high):
            buckets.append((high * patch_size, wide * patch_size))
        if (high + 1) * wide <= cells:
            high += 1
        else:
            wide -= 1
    return buckets


def closest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The ``(height, width)`` bucket whose aspect ratio is closest to the image's.

    The score ``min(bw/w, bh/h) / max(bw/w, bh/h)`` is 1 for the same aspect ratio and is compared exactly.
    Ties go to the larger bucket area, then to the larger ``(width, height)`` (the wider bucket), as upstream.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width} (height x width)")
    if not buckets:
        raise ValueError("no buckets to choose from")

    def rank(bucket: tuple[int, int]) -> tuple[Fraction, int, int, int]:
        bh, bw = bucket
        # bw/w and bh/h scaled by w·h: integers, so equal ratios tie exactly.
        across, down = bw * height, bh * width
        return Fraction(min(across, down), max(across, down)), bh * bw, bw, bh

    return max(buckets, key=rank)


def _describe(source: ImageSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)


@contextmanager
def _opened(source: ImageSource) -> Iterator[Image.Image]:
    """The lazily opened image (header read, no pixels); PIL's errors inside the block become ImageRejected."""
    where = _describe(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            yield image
    except FileNotFoundError as error:
        raise ImageRejected("missing_image", f"{where}: {error}") from error
    except Image.DecompressionBombError as error:  # PIL's own limit, checked before ours
        raise ImageRejected("image_too_large", f"{where}: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # PIL reports damage through all of these
        raise ImageRejected("unreadable_image", f"{where}: {error}") from error


def _check_size(image: Image.Image, max_pixels: int, min_side: int, where: str) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected("image_too_large", f"{where}: {width}x{height} pixels is more than {max_pixels}")
    if min(width, height) < min_side:
        raise ImageRejected("image_too_small", f"{where}: {width}x{height} has a side under {min_side} pixels")


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation from metadata read with the header. The base-class ``getexif`` is called on purpose:
    PIL's PNG override decodes the whole file to look for EXIF after the pixel data."""
    return Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)


def read_image_size(source: ImageSource, max_pixels: int, min_side: int = 1) -> tuple[int, int]:
    """The upright ``(height, width)`` of an image from its header alone (no pixel is decoded).

    Rejects what :func:`open_image` would reject from the header; a damaged pixel stream is only found there.
    """
    with _opened(source) as image:
        _check_size(image, max_pixels, min_side, _describe(source))
        width, height = image.size
        return (width, height) if _orientation(image) in _SWAPS_SIDES else (height, width)


def _rgb_on_white(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):  # 16-bit grey: convert() would clip at 255 instead of scaling
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    if not image.has_transparency_data:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def open_image(source: ImageSource, max_pixels: int, min_side: int) -> Image.Image:
    """Decode an image file (path or bytes) into an upright RGB image without metadata.

    Transparent pixels are blended onto white. More than ``max_pixels`` pixels or a side shorter than
    ``min_side`` is rejected from the header, before decoding (PIL's decompression-bomb limit,
    ``2 × Image.MAX_IMAGE_PIXELS``, also applies). Every pixel is decoded here, so truncated data is found.
    """
    where = _describe(source)
    with _opened(source) as image:
        _check_size(image, max_pixels, min_side, where)
        upright = _UPRIGHT.get(_orientation(image))
        image.load()
        rgb = _rgb_on_white(image)
    if upright is not None:
        rgb = rgb.transpose(upright)
    rgb.info = {}  # the stale orientation tag would rotate the image again if anyone honoured it
    return rgb


def crop_rng(seed: int, item_index: int, image_index: int) -> np.random.Generator:
    """The generator of one image's crop: the same item and image always get the same crop."""
    return np.random.default_rng([seed, item_index, image_index])


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Resize ``image`` to cover the ``(height, width)`` bucket and crop the bucket out at a random offset.

    Halving with a box filter first (while both sides are at least twice the bucket's) keeps the final bicubic
    resize from aliasing and makes it cheap. The top offset is drawn before the left one.
    """
    bucket_height, bucket_width = bucket
    while image.width >= 2 * bucket_width and image.height >= 2 * bucket_height:
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.BOX)
    width, height = image.size
    if bucket_width * height >= bucket_height * width:  # the width sets the scale; round the height up
        size = (bucket_width, -(-height * bucket_width // width))
    else:
        size = (-(-width * bucket_height // height), bucket_height)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    top = int(rng.integers(0, image.height - bucket_height + 1))
    left = int(rng.integers(0, image.width - bucket_width + 1))
    return image.crop((left, top, left + bucket_width, top + bucket_height))


def prepare_image(
    source: ImageSource, target_size: int, patch_size: int, rng: np.random.Generator, max_pixels: int, min_side: int
) -> Image.Image:
    """:func:`open_image`, then :func:`fit_to_bucket` into the closest of the :func:`resolution_buckets`."""
    image = open_image(source, max_pixels, min_side)
    bucket = closest_bucket(image.height, image.width, resolution_buckets(target_size, patch_size))
    return fit_to_bucket(image, bucket, rng)


def image_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images of one size -> float ``[B,3,H,W]`` in [0, 1] (the natural units of an rgb ImageTokenizer)."""
    if not images:
        raise ValueError("image_to_tensor needs at least one image")
    sizes = {image.size for image in images}
    modes = {image.mode for image in images}
    if len(sizes) != 1 or modes != {"RGB"}:
        raise ValueError(f"images must all be RGB and of one size, got sizes {sizes} and modes {modes}")
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
    return pixels.permute(0, 3, 1, 2).float() / 255.0
