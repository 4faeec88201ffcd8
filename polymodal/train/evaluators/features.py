"""Features of a frozen model: the data_dict key it writes for the evaluator's images, extracted once per evaluation
round (shared by every evaluator and every sweep point that asks for the same images, key and model part, whatever
labels each reads).

A ``batch_transform`` (a data module's batch transform, e.g.
:class:`~polymodal.data.multimodal.prefix.FixedPrefixLengths`) adds inputs the model reads besides the images: AIM's
encoder probed bidirectionally is the same model given a prefix of all its patches. It is called as the loader calls
it, on ``{image_key: images, "sample_id": item indices}`` with a generator seeded from the batch's first index.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal

import torch

from polymodal.data.multimodal.loader import BatchTransform
from polymodal.models.meta import DataDict
from polymodal.train.evaluators.context import EvalContext
from polymodal.train.evaluators.data import IMAGE, ImageSplit, TextEncoder
from polymodal.train.evaluators.sides import TextSide

Pool = Literal["none", "mean", "first"]
POOLS = ("none", "mean", "first")


def pooled(features: torch.Tensor, pool: Pool) -> torch.Tensor:
    """``[B, T, D]`` tokens -> ``[B, D]`` (mean over tokens, or the first one, e.g. a CLS); ``none`` keeps them."""
    if pool == "none":
        return features
    if features.dim() != 3:
        raise ValueError(f"pool={pool!r} needs token features [B, T, D], got {tuple(features.shape)}")
    return features.mean(dim=1) if pool == "mean" else features[:, 0]


def output_key(output: dict, key: str, where: str) -> torch.Tensor:
    if key not in output:
        raise KeyError(f"the model wrote no '{key}' for {where} (its output keys: {sorted(output)})")
    return output[key]


def image_inputs(
    images: torch.Tensor, image_key: str, batch_transform: BatchTransform | None, indices: list[int]
) -> DataDict:
    """The model's input batch for ``images`` (items ``indices`` of their split), ``batch_transform`` applied."""
    batch: DataDict = {image_key: images}
    if batch_transform is None:
        return batch
    batch["sample_id"] = torch.tensor(indices, dtype=torch.int64)
    return dict(batch_transform(batch, torch.Generator().manual_seed(indices[0])))


def embed_images(
    context: EvalContext,
    images: torch.Tensor,
    feature_key: str,
    part: str | None,
    image_key: str,
    pool: Pool,
    batch_transform: BatchTransform | None = None,
    indices: list[int] | None = None,
) -> torch.Tensor:
    """float32: the model's ``feature_key`` for a batch of images (pooled); ``indices``: the images' items in their
    split (default ``0 .. B-1``), which ``batch_transform`` sees as ``sample_id``."""
    indices = list(range(len(images))) if indices is None else indices
    batch = image_inputs(images, image_key, batch_transform, indices)
    output = context.forward({key: value.to(context.device) for key, value in batch.items()}, part)
    return pooled(output_key(output, feature_key, "the evaluation images"), pool).float()


def embed_texts(context: EvalContext, texts: list[str], encoder: TextEncoder, side: TextSide) -> torch.Tensor:
    """float32: the model's ``side.embed_key`` for a batch of texts encoded by ``encoder`` (token ids under
    ``side.key``, the mask under ``side.mask_key``, end-of-text positions under ``side.eot_key``)."""
    encoded = encoder.encode(texts)
    batch = {side.key: encoded["ids"].to(context.device)}
    for key, name in ((side.mask_key, "mask"), (side.eot_key, "eot")):
        if key is not None:
            batch[key] = encoded[name].to(context.device)
    return output_key(context.forward(batch, side.part), side.embed_key, "the evaluation texts").float()


def image_features(
    context: EvalContext,
    split: ImageSplit,
    feature_key: str,
    part: str | None = None,
    image_key: str = IMAGE,
    pool: Pool = "none",
    batch_size: int = 64,
    batch_transform: BatchTransform | None = None,
) -> dict[str, torch.Tensor]:
    """``{"features": float32 [N, ...], "label": int64 [N]}`` (label only when the split has a label key), the same
    on every rank, in the split's order; computed once per evaluation round (per ``batch_transform``)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")

    def features(indices: list[int]) -> dict[str, torch.Tensor]:
        images = split.load(indices)[IMAGE]
        return {"features": embed_images(context, images, feature_key, part, image_key, pool, batch_transform, indices)}

    def labels(indices: list[int]) -> dict[str, torch.Tensor]:
        return {"label": split.load(indices)["label"].to(context.device)}

    key = ("image_features", split.images_key, feature_key, part, image_key, pool, transform_key(batch_transform))
    values = dict(context.cached(key, lambda: context.map_items(len(split), batch_size, features)))
    if split.label_key:
        values.update(context.cached(("labels", split.key), lambda: context.map_items(len(split), batch_size, labels)))
    return values


def transform_key(transform: BatchTransform | None) -> Hashable:
    """What tells batch transforms apart for the feature cache: their class and settings when these are plain values
    (the probes of one config, each with its own FixedPrefixLengths of one length, share features), else the
    transform itself."""
    try:
        settings = tuple(sorted(vars(transform).items()))
        hash(settings)
    except TypeError:  # no __dict__, or settings that are not plain values
        return transform
    return type(transform), settings
