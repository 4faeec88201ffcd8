"""A trained model of the image–text family from Python: what :func:`polymodal.load_run` returns for its runs.

::

    from polymodal import load_run

    run = load_run("runs/lumina-tiny")                  # the model, its BPE and its image tokenizer
    out = run.text_to_image(["a red cube left of a blue ball"], size=(64, 64))
    out.pixels                                          # [B, 3, 64, 64] in [0, 1]
    run.caption(["photo.png"]).texts                    # one caption per image

Sizes are ``(height, width)`` in pixels: a resolution bucket of the run's records or sides that are multiples of
twice the image tokenizer's downsampling. The buckets (and the default size, the squarest one) are known while
the run's data config and records are where training read them; otherwise give ``size`` / ``target_size``.
Sampling is :class:`~polymodal.families.lumina.generate.sampler.ImageTextSampler`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tokenizers import Tokenizer
from torch import Tensor

from polymodal.config import ConfigError
from polymodal.families.lumina.data_config import load_data_config
from polymodal.families.lumina.generate.prompts import (
    ImageSizes,
    check_question,
    encode_image,
    human_turn,
    prompt_image,
    text_to_image_prompt,
)
from polymodal.families.lumina.generate.sampler import ImageTextSampler
from polymodal.families.lumina.generate.settings import CAPTION, SamplingSettings
from polymodal.families.lumina.pretokenize import IMAGE
from polymodal.families.lumina.records import RecordSet
from polymodal.families.lumina.vocabulary import VocabularyLayout, parse_image_block
from polymodal.runs import TrainedRun
from polymodal.tokenizers.carried import TEXT
from polymodal.tokenizers.image.tokenizer import ImageTokenizer


@dataclass
class GeneratedImages:
    """Text -> image answers: the assistant ``turns`` (``[B, L]`` ids, image block then ``<|eot|>``), their
    ``codes`` (``[B, h, w]``) and the decoded ``pixels`` (``[B, 3, H, W]`` in [0, 1]), on the CPU."""

    prompts: list[str]
    turns: Tensor
    codes: Tensor
    pixels: Tensor


@dataclass
class Captions:
    """Image -> text answers: the ``images`` as the model read them (cut to their buckets), the answer ``texts``
    and their ``turns`` (ids, ``<|eot|>`` included when the answer ended)."""

    images: list[Image.Image]
    texts: list[str]
    turns: list[list[int]]


def records_manifest(config: DictConfig) -> dict[str, Any] | None:
    """The manifest of the first record set the run trained on, if its data config and records are still where
    training read them (None otherwise)."""
    data_config = OmegaConf.select(config, "data.data_config")
    if not isinstance(data_config, str):
        return None
    try:
        return RecordSet(load_data_config(data_config)[0].path).manifest
    except (ConfigError, OSError, ValueError):
        return None


class LuminaRun(TrainedRun):
    """A trained model of the family with its text tokenizer (``text``) and image tokenizer (``image``)."""

    @property
    def text_tokenizer(self) -> Tokenizer:
        return self.tokenizer(TEXT)

    @property
    def image_tokenizer(self) -> ImageTokenizer:
        return self.tokenizer(IMAGE)

    @property
    def layout(self) -> VocabularyLayout:
        """The vocabulary: the image codes are the last ``codebook_size`` ids of the model's."""
        codebook = self.image_tokenizer.codebook_size
        layout = VocabularyLayout(int(self.config.model.vocab_size) - codebook, codebook)
        layout.check_text_tokenizer(self.text_tokenizer, "the run's text tokenizer")
        return layout

    @cached_property
    def records_manifest(self) -> dict[str, Any]:
        """The manifest of the run's first record set, read once; empty when the records are not at hand."""
        return records_manifest(self.config) or {}

    def image_sizes(self, target_size: int | None = None) -> ImageSizes:
        """What sizes the run draws and reads: ``target_size``, else the records' (see the module docstring)."""
        manifest = self.records_manifest
        return ImageSizes(
            self.image_tokenizer.downsample, target_size or manifest.get("target_size"), manifest.get("patch_size")
        )

    def sampler(self, settings: SamplingSettings | None = None) -> ImageTextSampler:
        return ImageTextSampler(self.model, self.layout, settings, self.text_tokenizer.get_vocab_size())

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        return generator or torch.Generator(device=self.device).manual_seed(0)

    @torch.no_grad()
    def text_to_image(
        self,
        prompts: Sequence[str],
        size: tuple[int, int] | None = None,
        settings: SamplingSettings | None = None,
        generator: torch.Generator | None = None,
        target_size: int | None = None,
    ) -> GeneratedImages:
        """One image of ``size`` per prompt (default size: the squarest bucket; default generator: seeded 0)."""
        sizes = self.image_sizes(target_size)
        size = size or sizes.default()
        rows, columns = sizes.grid(size)
        layout = self.layout
        tokens = [text_to_image_prompt(prompt, size, self.text_tokenizer, layout) for prompt in prompts]
        turns = self.sampler(settings).images(tokens, rows, columns, self._generator(generator)).cpu()
        codes = torch.stack([torch.from_numpy(parse_image_block(turn[:-1].numpy(), layout)) for turn in turns])
        pixels = self.image_tokenizer.decode(codes.to(self.device)).cpu()
        return GeneratedImages(list(prompts), turns, codes, pixels)

    @torch.no_grad()
    def caption(
        self,
        images: Sequence[str | Path],
        question: str = CAPTION,
        settings: SamplingSettings | None = None,
        max_new_tokens: int = 128,
        generator: torch.Generator | None = None,
        target_size: int | None = None,
        seed: int = 0,
    ) -> Captions:
        """The answer to ``question`` (one ``<|image|>`` placeholder) about each image file; ``seed`` draws the
        crops of the images to their buckets."""
        check_question(question)  # before any image is read
        sizes = self.image_sizes(target_size)
        read = [prompt_image(source, sizes, seed, index) for index, source in enumerate(images)]
        return self.answer(read, question, settings, max_new_tokens, generator)

    @torch.no_grad()
    def answer(
        self,
        images: Sequence[Image.Image],
        question: str = CAPTION,
        settings: SamplingSettings | None = None,
        max_new_tokens: int = 128,
        generator: torch.Generator | None = None,
    ) -> Captions:
        """The answer to ``question`` (one ``<|image|>`` placeholder) about each RGB image, read as it is (sides
        multiples of the image tokenizer's downsampling)."""
        check_question(question)
        layout = self.layout
        tokens = [
            human_turn(question, [encode_image(image, self.image_tokenizer, layout)], self.text_tokenizer, layout)
            for image in images
        ]
        turns = self.sampler(settings).text(tokens, max_new_tokens, self._generator(generator))
        ended = [turn[:-1] if turn and turn[-1] == layout.end_of_turn else turn for turn in turns]
        return Captions(list(images), self.text_tokenizer.decode_batch(ended), turns)


RUN_CLASS = LuminaRun
