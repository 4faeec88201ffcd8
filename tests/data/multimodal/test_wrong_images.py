"""Valid but wrong images (grey for rgb, wrong size, too large, decompression bombs) are converted or skipped."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.multimodal.decode import MAX_IMAGE_PIXELS, DecodeError, decode_member
from polymodal.data.multimodal.imagefolder import decode_rgb_file
from polymodal.data.multimodal.loader import ResumableLoader
from polymodal.data.multimodal.skips import SampleError
from polymodal.data.multimodal.transforms import AlignedAugment


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` RGB pixels in a few bytes: decoding it would need the whole canvas."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def colour(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_grey_png_for_rgb_is_converted_to_three_equal_channels():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = decode_member("rgb", "png", png_bytes(grey))
    assert rgb.shape == (3, 8, 8) and rgb.dtype == torch.uint8
    assert all(torch.equal(rgb[c], torch.from_numpy(grey)) for c in range(3))
    assert decode_member("edges", "png", png_bytes(grey)).shape == (1, 8, 8)  # grey modalities stay grey


@pytest.mark.parametrize("side", [5000, 100_000])  # over our limit; over PIL's bomb limit (DecompressionBombError)
def test_too_large_images_and_decompression_bombs_are_not_decoded(side):
    assert side * side > MAX_IMAGE_PIXELS
    with pytest.raises(DecodeError, match="pixels|decompression bomb") as caught:
        decode_member("rgb", "png", png_header_only(side, side))
    assert caught.value.reason == "too_large"


def test_colour_png_for_a_class_map_is_wrong_mode():
    with pytest.raises(DecodeError) as caught:
        decode_member("semseg", "png", png_bytes(colour(8)))
    assert caught.value.reason == "wrong_mode"


class EncodedScenes:
    """Sample i is ``{"rgb": png, "depth": png}`` bytes decoded on read; ``wrong`` replaces some samples' members."""

    def __init__(self, size: int, wrong: dict[int, dict[str, bytes]]) -> None:
        self.size = size
        self.wrong = wrong

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, sample_id: int) -> dict:
        side = 32 if sample_id % 2 else 96  # smaller and larger than the 64 px target: both are fine
        members = {
            "rgb": png_bytes(colour(side, sample_id)),
            "depth": png_bytes(np.full((side, side), sample_id, dtype=np.uint8)),
            **self.wrong.get(sample_id, {}),
        }
        try:
            return {name: decode_member(name, "png", data) for name, data in members.items()}
        except DecodeError as error:
            raise SampleError(error.reason, sample_id, str(error)) from error


def test_wrong_images_are_counted_skips_by_reason_and_replaced_over_many_epochs():
    wrong = {
        0: {"rgb": png_bytes(np.zeros((96, 96), dtype=np.uint8))},  # grey for rgb: converted, kept
        1: {"rgb": png_header_only(100_000, 100_000)},  # decompression bomb
        2: {"rgb": png_header_only(5000, 5000)},  # more than MAX_IMAGE_PIXELS
        3: {"rgb": png_bytes(colour(64))},  # rgb 64 px beside a 32 px depth map
        4: {"depth": png_bytes(colour(96))},  # colour image as depth
    }
    augment = AlignedAugment(64, ["rgb", "depth"])
    loader = ResumableLoader(EncodedScenes(24, wrong), 4, seed=0, transform=augment, error_budget=4)
    seen = set()
    for _ in range(18):  # three epochs: each bad sample is met every epoch
        batch = next(loader)
        assert batch["rgb"].shape == (4, 3, 64, 64) and batch["depth"].shape == (4, 1, 64, 64)
        seen.update(batch["sample_id"].tolist())
    assert seen == {0, *range(5, 24)}
    assert loader.skip_counts() == {"too_large": 2, "wrong_shape": 1, "wrong_mode": 1}


def test_imagefolder_decompression_bomb_is_a_too_large_skip(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(SampleError) as caught:
        decode_rgb_file(path, 7)
    assert caught.value.reason == "too_large" and caught.value.sample_id == 7
