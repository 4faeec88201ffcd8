import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.families.lumina.images import (
    ImageRejected,
    closest_bucket,
    crop_rng,
    fit_to_bucket,
    image_to_tensor,
    open_image,
    prepare_image,
    read_image_size,
    resolution_buckets,
)

LIMIT = 4096 * 4096
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width x height`` RGB pixels, followed by a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def reason_of(source, max_pixels: int = LIMIT, min_side: int = 1) -> str:
    with pytest.raises(ImageRejected) as caught:
        open_image(source, max_pixels, min_side)
    return caught.value.reason


@pytest.mark.parametrize(
    ("target", "count", "widest", "tallest"),
    [(256, 25, (128, 512), (512, 128)), (512, 49, (256, 1024), (1024, 256)), (768, 73, (384, 1536), (1536, 384))]
    + [(1024, 97, (512, 2048), (2048, 512))],
)
def test_resolution_buckets_match_upstream_counts(target, count, widest, tallest):
    buckets = resolution_buckets(target, 32)
    assert len(buckets) == len(set(buckets)) == count
    assert (buckets[0], buckets[-1]) == (widest, tallest)
    assert (target, target) in buckets
    assert all(h % 32 == 0 and w % 32 == 0 and h * w <= target * target for h, w in buckets)
    assert buckets == sorted(buckets, key=lambda b: (-b[1], b[0]))  # widest to tallest


def test_resolution_buckets_small_list():
    assert resolution_buckets(64, 16) == [
        (32, 128), (32, 112), (32, 96), (32, 80), (48, 80), (48, 64), (64, 64),
        (64, 48), (80, 48), (80, 32), (96, 32), (112, 32), (128, 32),
    ]  # fmt: skip


@pytest.mark.parametrize(("target", "patch", "ratio"), [(100, 32, 4.0), (0, 32, 4.0), (64, 0, 4.0), (64, 16, 0.5)])
def test_resolution_buckets_rejects_bad_arguments(target, patch, ratio):
    with pytest.raises(ValueError):
        resolution_buckets(target, patch, ratio)


def test_closest_bucket_matches_aspect_ratio():
    buckets = resolution_buckets(512, 32)
    assert closest_bucket(100, 100, buckets) == (512, 512)
    assert closest_bucket(100, 200, buckets) == (352, 704)  # 2:1
    assert closest_bucket(300, 100, buckets) == (864, 288)  # 1:3


def test_closest_bucket_ties_go_to_larger_area_then_wider():
    assert closest_bucket(100, 200, [(32, 64), (64, 128), (16, 32)]) == (64, 128)
    assert closest_bucket(100, 100, [(64, 32), (32, 64)]) == (32, 64)  # same score and area: the wider one


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    stored = Image.new("RGB", (64, 32), GREEN)  # width 64, height 32, red top-left corner
    stored.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    path = save(stored, tmp_path / f"turned.{fmt.lower()}", format=fmt, exif=exif.tobytes())

    assert read_image_size(path, LIMIT) == (64, 32)
    upright = np.asarray(open_image(path, LIMIT, 1)).astype(int)
    assert upright.shape == (64, 32, 3)
    assert np.abs(upright[2, -3] - RED).max() < 40  # top-left went to the top-right
    assert np.abs(upright[2, 2] - GREEN).max() < 40
    assert np.abs(upright[-3, -3] - GREEN).max() < 40
    assert 0x0112 not in open_image(path, LIMIT, 1).getexif()


def test_transparent_pixels_become_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((1, 1), (255, 0, 0, 255))
    image.putpixel((2, 2), (0, 0, 0, 128))
    rgb = open_image(save(image, tmp_path / "alpha.png"), LIMIT, 1)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((1, 1)) == RED
    assert all(abs(value - 127) <= 1 for value in rgb.getpixel((2, 2)))


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, *BLUE])
    image.putpixel((3, 3), 1)
    rgb = open_image(save(image, tmp_path / "palette.png", transparency=0), LIMIT, 1)
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((3, 3)) == BLUE


def test_sixteen_bit_grey_is_scaled(tmp_path):
    grey = Image.fromarray(np.full((4, 4), 0x8080, dtype=np.uint16))
    assert grey.mode == "I;16"
    assert open_image(save(grey, tmp_path / "deep.png"), LIMIT, 1).getpixel((0, 0)) == (128, 128, 128)


def test_accepts_bytes_and_paths(tmp_path):
    path = save(noise(8, 12), tmp_path / "noise.png")
    from_path = np.asarray(open_image(str(path), LIMIT, 1))
    assert np.array_equal(from_path, np.asarray(open_image(path.read_bytes(), LIMIT, 1)))
    assert read_image_size(path.read_bytes(), LIMIT) == (8, 12)


def test_damaged_and_missing_files_are_rejected(tmp_path):
    data = io.BytesIO()
    noise(64, 64).save(data, format="PNG")
    assert reason_of(data.getvalue()[: len(data.getvalue()) // 2]) == "unreadable_image"
    assert reason_of(np.random.default_rng(0).bytes(500)) == "unreadable_image"
    assert reason_of(tmp_path / "absent.png") == "missing_image"
    with pytest.raises(ImageRejected, match="missing_image"):
        read_image_size(tmp_path / "absent.png", LIMIT)


def test_too_large_is_rejected_from_the_header():
    # The pixel data is a few bytes: decoding would fail as unreadable, so "too large" proves it was not decoded.
    assert reason_of(png_declaring(9000, 9000)) == "image_too_large"
    assert read_image_size(png_declaring(9000, 9000), 10**8) == (9000, 9000)
    assert reason_of(png_declaring(50_000, 50_000), max_pixels=10**10) == "image_too_large"  # PIL's own limit
    with pytest.raises(ImageRejected, match="image_too_large"):
        read_image_size(png_declaring(50_000, 50_000), LIMIT)


def test_too_small_is_rejected(tmp_path):
    path = save(noise(3, 10), tmp_path / "thin.png")
    assert reason_of(path, min_side=4) == "image_too_small"
    assert open_image(path, LIMIT, 3).size == (10, 3)
    with pytest.raises(ImageRejected, match="image_too_small"):
        read_image_size(path, LIMIT, min_side=4)


@pytest.mark.parametrize(("height", "width"), [(100, 300), (301, 97), (20, 30), (64, 128), (1000, 3)])
def test_fit_to_bucket_gives_the_exact_bucket(height, width):
    assert fit_to_bucket(noise(height, width), (64, 128), crop_rng(0, 0, 0)).size == (128, 64)


def test_fit_to_bucket_crop_is_reproducible():
    image = noise(100, 300)  # covers a 64x64 bucket at 192x64: 129 possible left offsets

    def crop(seed: int) -> np.ndarray:
        return np.asarray(fit_to_bucket(image, (64, 64), crop_rng(seed, 3, 1)))

    assert np.array_equal(crop(0), crop(0))
    assert not np.array_equal(crop(0), crop(1))
    assert not np.array_equal(crop(0), np.asarray(fit_to_bucket(image, (64, 64), crop_rng(0, 4, 1))))


def test_fit_to_bucket_halves_large_images(monkeypatch):
    rows, cols = np.mgrid[0:500, 0:1000]
    smooth = np.stack([cols / 4, rows / 2, 128 + 100 * np.sin(cols / 60) * np.cos(rows / 40)], axis=-1)
    image = Image.fromarray(smooth.clip(0, 255).astype(np.uint8))
    reference = np.asarray(image.resize((128, 64), Image.Resampling.LANCZOS)).astype(float)
    filters = []
    resize = Image.Image.resize

    def recording_resize(self: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
        filters.append(resample)
        return resize(self, size, resample)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)

    fitted = fit_to_bucket(image, (64, 128), crop_rng(0, 0, 0))
    assert filters == [Image.Resampling.BOX, Image.Resampling.BOX, Image.Resampling.BICUBIC]
    assert np.abs(np.asarray(fitted).astype(float) - reference).mean() < 2.0


def test_prepare_image_fits_the_closest_bucket(tmp_path):
    path = save(noise(50, 100), tmp_path / "wide.png")
    prepared = prepare_image(path, 64, 16, crop_rng(0, 0, 0), LIMIT, 1)
    assert (prepared.height, prepared.width) == (48, 80)  # closest to 1:2 among the 64/16 buckets


def test_image_to_tensor():
    images = [Image.new("RGB", (5, 3), RED), Image.new("RGB", (5, 3), WHITE)]
    tensor = image_to_tensor(images)
    assert tensor.shape == (2, 3, 3, 5) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(tensor[1], torch.ones(3, 3, 5))
    with pytest.raises(ValueError):
        image_to_tensor([Image.new("RGB", (5, 3)), Image.new("RGB", (3, 5))])
    with pytest.raises(ValueError):
        image_to_tensor([])
