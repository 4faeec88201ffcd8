"""Prompts as the model saw them in training: ``<|bos|>``, one human turn — its text, each ``<|image|>`` replaced
by an image's block — and ``<|eot|>`` (docs/lumina.md). The model answers with the assistant turn.

They are built with the pre-tokenizer's own functions (:func:`plan_segments`, :func:`assemble`), with special
tokens spelt in a prompt encoded as plain text, and images are cut to a resolution bucket as the pre-tokenizer
cuts them (:func:`~polymodal.families.lumina.images.prepare_image`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from polymodal.families.lumina.conversations import (
    PLACEHOLDER,
    Conversation,
    assemble,
    plain_text_tokenizer,
    plan_segments,
)
from polymodal.families.lumina.generate.settings import TEXT_TO_IMAGE
from polymodal.families.lumina.images import (
    closest_bucket,
    crop_rng,
    image_to_tensor,
    prepare_image,
    resolution_buckets,
)
from polymodal.families.lumina.vocabulary import VocabularyLayout, image_block
from polymodal.tokenizers.image.tokenizer import ImageTokenizer

MAX_PIXELS = 64 * 1024 * 1024  # the pre-tokenizer's decompression-bomb guard
GIVE_A_SIZE = "give a size (--size WxH) or the target size of the buckets (--target-size)"


def human_turn(
    text: str, image_blocks: Sequence[np.ndarray], tokenizer: Tokenizer, layout: VocabularyLayout
) -> list[int]:
    """``<|bos|>`` + ``text`` with its ``<|image|>`` placeholders replaced by ``image_blocks`` in order +
    ``<|eot|>``. Sets ``tokenizer`` to encode special tokens as plain text (a prompt cannot forge the structure)."""
    if text.count(PLACEHOLDER) != len(image_blocks):
        raise ValueError(
            f"the prompt has {text.count(PLACEHOLDER)} {PLACEHOLDER} placeholders for {len(image_blocks)} images"
        )
    conversation = Conversation(index=0, item_id="prompt", turns=(text,), images=())
    segments = plan_segments(conversation, plain_text_tokenizer(tokenizer))
    ids, _ = assemble(segments, list(image_blocks), layout)
    return ids.tolist()


def check_question(question: str) -> None:
    """A question about an image must hold exactly one ``<|image|>`` placeholder (ValueError otherwise)."""
    if question.count(PLACEHOLDER) != 1:
        raise ValueError(f"the question must hold one {PLACEHOLDER} placeholder, got {question!r}")


def text_to_image_prompt(
    prompt: str, size: tuple[int, int], tokenizer: Tokenizer, layout: VocabularyLayout
) -> list[int]:
    """Upstream's request for an image of ``size = (height, width)`` pixels showing ``prompt``."""
    height, width = size
    return human_turn(TEXT_TO_IMAGE.format(width=width, height=height, prompt=prompt), [], tokenizer, layout)


@dataclass(frozen=True)
class ImageSizes:
    """The image sizes a run can draw and read: its image tokenizer's ``downsample`` and, when the run's record
    sets are at hand, the pre-tokenizer's ``target_size`` and ``patch_size`` (the resolution buckets)."""

    downsample: int
    target_size: int | None = None
    patch_size: int | None = None

    @property
    def bucket_grid(self) -> int:
        """The pixels the bucket sides are multiples of (the pre-tokenizer's default: twice the downsampling)."""
        return self.patch_size or 2 * self.downsample

    @property
    def buckets(self) -> list[tuple[int, int]]:
        """``(height, width)`` of the resolution buckets (none when the target size is unknown)."""
        return [] if self.target_size is None else resolution_buckets(self.target_size, self.bucket_grid)

    def default(self) -> tuple[int, int]:
        """The squarest bucket."""
        if not self.buckets:
            raise ValueError(f"the run's records (its target size) are not at hand: {GIVE_A_SIZE}")
        return closest_bucket(1, 1, self.buckets)

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """Code ``(rows, columns)`` of an image of ``size = (height, width)`` pixels: a bucket, or sides that are
        multiples of twice the downsampling (a whole number of upstream's patches)."""
        height, width = size
        step = 2 * self.downsample
        if size not in self.buckets and (height < step or width < step or height % step or width % step):
            buckets = ", ".join(f"{w}x{h}" for h, w in self.buckets)
            raise ValueError(
                f"an image of {width}x{height} px cannot be drawn: its sides must be multiples of {step} px"
                + (f" or a bucket of target size {self.target_size} ({buckets})" if buckets else "")
            )
        return height // self.downsample, width // self.downsample


def prompt_image(source: str | Path, sizes: ImageSizes, seed: int, index: int) -> Image.Image:
    """The image at ``source`` cut to its closest bucket as the pre-tokenizer cuts it (crop offset drawn from
    ``(seed, index)``)."""
    if sizes.target_size is None:
        raise ValueError(f"the run's records (its target size) are not at hand: {GIVE_A_SIZE}")
    return prepare_image(source, sizes.target_size, sizes.bucket_grid, crop_rng(seed, index, 0), MAX_PIXELS, 1)


@torch.no_grad()
def encode_image(image: Image.Image, tokenizer: ImageTokenizer, layout: VocabularyLayout) -> np.ndarray:
    """The image block of one RGB image (sides multiples of the tokenizer's downsampling)."""
    pixels = image_to_tensor([image]).to(next(tokenizer.parameters()).device)
    return image_block(tokenizer.encode(pixels)[0].cpu().numpy(), layout)
