"""A trained 4M from Python: what :func:`polymodal.load_run` returns for a 4M run, checkpoint or export.

::

    from polymodal import load_run

    run = load_run("runs/fourm-tiny")              # the model and the tokenizers the run carries
    out = run.generate({"rgb@64": images}, targets=["tok_depth@64", "caption"])
    out["tok_depth@64"]                            # [B, 1, 64, 64] depth in metres, decoded by the depth tokenizer
    out["caption"]                                 # B captions

:meth:`FourMRun.generation_batch` is the helper underneath: it turns images and texts into the model's generation
batch (:mod:`polymodal.families.fourm.generate.inputs`), encoding images of ``tok_`` modalities with the run's
tokenizers, so the batch can also be handed to :class:`~polymodal.families.fourm.generate.sampler.GenerationSampler`
with a schedule of one's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from polymodal.families.fourm.generate.inputs import (
    Batch,
    Entry,
    batch_size_of,
    full_input,
    generation_batch,
    text_input,
    text_prompt_target,
)
from polymodal.families.fourm.generate.outputs import check_decoders, decode_generations
from polymodal.families.fourm.generate.sampler import GenerationSampler
from polymodal.families.fourm.generate.schedules import schedule_from_dict
from polymodal.families.fourm.modalities import ModalitySpec
from polymodal.families.fourm.samples import normalise_rgb
from polymodal.runs import TrainedRun
from polymodal.tokenizers.carried import TEXT

Images = Tensor | Sequence[Any]  # float [B, C, H, W] in [0, 1], or PIL images


def images_at(images: Images, resolution: int) -> Tensor:
    """Images as float ``[B, C, resolution, resolution]`` in [0, 1]: the largest centre square of each, resized
    (antialiased) — how evaluation crops a scene."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be float [B, C, H, W] in [0, 1], got {images.dtype} {tuple(images.shape)}")
        batch = list(images)
    else:
        batch = [F.to_dtype(F.to_image(image), torch.float32, scale=True) for image in images]
    if not batch:
        raise ValueError("no images given")
    squares = [F.center_crop(image, min(image.shape[-2:])) for image in batch]
    return torch.stack([F.resize(image, [resolution, resolution], antialias=True) for image in squares])


class FourMRun(TrainedRun):
    """A trained :class:`~polymodal.families.fourm.model.fourm.FourM` with its image and text tokenizers."""

    @property
    def modalities(self) -> Mapping[str, ModalitySpec]:
        return self.model.modalities

    def generation_batch(self, inputs: Mapping[str, Any], targets: Sequence[str]) -> Batch:
        """The generation batch for ``inputs`` by modality name, with an empty entry for each of ``targets``.

        Values: images (:data:`Images`) for the rgb pixel modality and for ``tok_`` modalities (encoded with the
        run's tokenizer of that modality), or integer codes ``[B, h, w]`` for ``tok_`` modalities; a list of
        strings for text modalities (``caption``, ``det``) — for a modality that is also a target, each string is
        a prompt ending in ``[S_1]`` for the model to complete."""
        entries = {name: self._entry(name, value, name in targets) for name, value in inputs.items()}
        if not entries:
            raise ValueError("give at least one input: 4M generates from conditioning (e.g. an image or a caption)")
        return generation_batch(self.modalities, entries, targets, batch_size_of(entries), self.device)

    def _entry(self, name: str, value: Any, is_target: bool) -> Entry:
        if name not in self.modalities:
            raise ValueError(f"unknown modality {name!r}; the model has {list(self.modalities)}")
        spec = self.modalities[name]
        if spec.is_sequence:
            texts = [value] if isinstance(value, str) else list(value)
            build = text_prompt_target if is_target else text_input
            return build(spec, self.tokenizer(TEXT), texts)
        if spec.is_pixels:
            return full_input(spec, normalise_rgb(images_at(value, spec.resolution)))
        if spec.is_image:
            if isinstance(value, Tensor) and not value.is_floating_point():
                return full_input(spec, value)
            pixels = images_at(value, spec.resolution).to(self.device)
            with torch.no_grad():
                return full_input(spec, self.tokenizer(name).encode(pixels))
        raise ValueError(f"modality {name!r} ({spec.kind}) cannot be built from images or texts; pass its entry")

    def generate(
        self, inputs: Mapping[str, Any], targets: Sequence[str], seed: int = 0, **schedule: Any
    ) -> dict[str, Any]:
        """Generate ``targets`` in order from ``inputs`` (see :meth:`generation_batch`); returns each target
        decoded — images in natural units ``[B, C, H, W]``, or a list of strings.

        ``schedule`` takes 4M's schedule keys (``autoregression_schemes``, ``decoding_steps``, ``temps``,
        ``cfg_scales``, ``top_k``, ``top_p``, ...: one value for every target or a list with one per target);
        by default MaskGIT for images, autoregression for text, 8 cosine steps, temperature 1."""
        plan = schedule_from_dict(
            {"cond_domains": [n for n in inputs if n not in targets], "target_domains": list(targets), **schedule},
            self.modalities,
        )
        image_tokenizers = {name: t for name, t in self.tokenizers.items() if name in self.modalities}
        text_tokenizer = self.tokenizers.get(TEXT)
        check_decoders(plan.targets, self.modalities, image_tokenizers, text_tokenizer)
        batch = self.generation_batch(inputs, plan.targets)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        generated = GenerationSampler(self.model).generate(batch, plan, generator)
        decoded = decode_generations(generated, self.modalities, plan.targets, image_tokenizers, text_tokenizer)
        return {item.name: item.images if item.texts is None else item.texts for item in decoded if item.generated}


RUN_CLASS = FourMRun
