"""Features of a frozen model: the data_dict key it writes for the evaluator's images, extracted once per evaluation
round (shared by every evaluator and every sweep point that asks for the same split, key and model part)."""

from __future__ import annotations

from typing import Literal

import torch

from polymodal.train.evaluators.context import EvalContext
from polymodal.train.evaluators.data import IMAGE, ImageSplit, TextEncoder

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


def embed_images(
    context: EvalContext, images: torch.Tensor, feature_key: str, part: str | None, image_key: str, pool: Pool
) -> torch.Tensor:
    """float32: the model's ``feature_key`` for a batch of images (pooled)."""
    output = context.forward({image_key: images.to(context.device)}, part)
    return pooled(output_key(output, feature_key, "the evaluation images"), pool).float()


def embed_texts(
    context: EvalContext,
    texts: list[str],
    encoder: TextEncoder,
    feature_key: str,
    part: str | None,
    text_key: str,
    mask_key: str | None,
    eot_key: str | None = None,
) -> torch.Tensor:
    """float32: the model's ``feature_key`` for a batch of texts (token ids under ``text_key``, mask under
    ``mask_key``, end-of-text positions under ``eot_key``)."""
    encoded = encoder.encode(texts)
    batch = {text_key: encoded["ids"].to(context.device)}
    for key, name in ((mask_key, "mask"), (eot_key, "eot")):
        if key is not None:
            batch[key] = encoded[name].to(context.device)
    return output_key(context.forward(batch, part), feature_key, "the evaluation texts").float()


def image_features(
    context: EvalContext,
    split: ImageSplit,
    feature_key: str,
    part: str | None = None,
    image_key: str = IMAGE,
    pool: Pool = "none",
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """``{"features": float32 [N, ...], "label": int64 [N]}`` (label only when the split has a label key), the same
    on every rank, in the split's order; computed once per evaluation round."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")

    def compute(indices: list[int]) -> dict[str, torch.Tensor]:
        batch = split.load(indices)
        values = {"features": embed_images(context, batch[IMAGE], feature_key, part, image_key, pool)}
        if "label" in batch:
            values["label"] = batch["label"].to(context.device)
        return values

    key = ("image_features", split.key, feature_key, part, image_key, pool)
    return context.cached(key, lambda: context.map_items(len(split), batch_size, compute))
