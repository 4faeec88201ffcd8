"""CLIP's symmetric contrastive loss, with the negatives of every data-parallel rank (and, optionally, NegCLIP's hard
negative captions)."""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from polymodal.distributed.collectives import all_gather_with_grad
from polymodal.distributed.groups import data_parallel_group
from polymodal.models.meta import DataDict, Objective


class CLIPContrastiveLoss(Objective):
    """``(CE(logits_per_image, labels) + CE(logits_per_text, labels)) / 2`` over L2-normalised embeddings.

    Reads ``image_embeds`` and ``text_embeds`` ``[B, D]`` (row ``i`` of each is a matching pair) and the scalar
    ``logit_scale`` (the model's learnable ``exp(log_scale)``; not re-normalised here, as in CLIP). Computed in
    float32 whatever the autocast dtype.

    Across ranks (the data-parallel group of :func:`~polymodal.distributed.groups.data_parallel_group`, never WORLD)
    it is the local-loss form with gradients through the gather (open_clip's ``ClipLoss(local_loss=True,
    gather_with_grad=True)``): the features of every rank are gathered, and each rank scores its own ``B`` rows
    against all ``B · dp`` columns, ``logits_per_image = scale · image @ all_text.T`` and ``logits_per_text = scale ·
    text @ all_image.T``, with labels ``dp_rank · B + arange(B)``. Every rank must hold the same ``B``.

    Gradient convention: each rank's loss is the mean over its own rows, and the mean over ranks of these losses is
    the one-process loss over the global batch. The gather's backward sums over ranks the gradient flowing into each
    rank's slice, so a rank's feature gradient is ``dp`` times the one-process gradient of its rows, and the logit
    scale's gradient is this rank's share; the data-parallel mean of parameter gradients (DDP, FSDP) then gives
    exactly the one-process gradient of the global-batch loss.

    Hard negatives (NegCLIP; ``hard_negative_key``, written by
    :class:`~polymodal.data.multimodal.hard_negatives.SwappedWordNegatives`): when the batch holds that key, bool
    ``[B]``, ``text_embeds`` has ``2B`` rows, row ``B + i`` a caption like row ``i`` with one word swapped. The
    negatives of every rank are gathered like the captions and join the image-to-text candidates (the ones whose
    ``hard_negative_key`` is False are left out); text-to-image is unchanged, as in NegCLIP. Batches without the key
    (validation) get the plain loss.

    Metrics: ``image_to_text_accuracy`` and ``text_to_image_accuracy`` (top-1 over all gathered candidates, this
    rank's rows), ``logit_scale``, and with hard negatives ``hard_negative_accuracy``: the share of this rank's
    images that score their caption above its hard negative.
    """

    def __init__(
        self,
        image_key: str = "image_embeds",
        text_key: str = "text_embeds",
        scale_key: str = "logit_scale",
        hard_negative_key: str | None = None,
    ):
        super().__init__(read_keys=[image_key, text_key, scale_key])
        self.hard_negative_key = hard_negative_key

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_key, text_key, scale_key = self.read_keys
        image, text, scale = data[image_key], data[text_key], data[scale_key]
        negative_valid = data.get(self.hard_negative_key) if self.hard_negative_key is not None else None
        rows = image.shape[0] * (1 if negative_valid is None else 2)
        if image.dim() != 2 or text.shape != (rows, *image.shape[1:]):
            shapes = f"{tuple(image.shape)} and {tuple(text.shape)}"
            hint = "" if negative_valid is None else f" (with hard negatives {text_key} has 2B rows)"
            raise ValueError(f"{image_key} must be [B, D] and {text_key} [{rows}, D]{hint}, got {shapes}")
        if negative_valid is not None and negative_valid.shape != image.shape[:1]:
            shape, rows = tuple(negative_valid.shape), image.shape[0]
            raise ValueError(f"{self.hard_negative_key} must be bool [B={rows}], one per caption, got {shape}")
        if scale.numel() != 1:
            raise ValueError(f"{scale_key} must be a scalar, got shape {tuple(scale.shape)}")
        with torch.autocast(device_type=image.device.type, enabled=False):
            image, text, scale = image.float(), text.float(), scale.float().reshape(())
            captions, negatives = text[: image.shape[0]], text[image.shape[0] :]
            group = data_parallel_group()
            gather = partial(all_gather_with_grad, dim=0, group=group) if group is not None else lambda x: x
            all_image, all_text = gather(image), gather(captions)
            rank = 0 if group is None else dist.get_rank(group)
            labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
            logits_per_image = scale * image @ all_text.T
            logits_per_text = scale * captions @ all_image.T
            if negative_valid is not None:
                all_valid = gather(negative_valid.to(image.device, torch.float32)).bool()
                negative_logits = (scale * image @ gather(negatives).T).masked_fill(~all_valid, float("-inf"))
                logits_per_image = torch.cat([logits_per_image, negative_logits], dim=1)
            loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        metrics = {
            "image_to_text_accuracy": (logits_per_image.detach().argmax(-1) == labels).float().mean(),
            "text_to_image_accuracy": (logits_per_text.detach().argmax(-1) == labels).float().mean(),
            "logit_scale": scale.detach(),
        }
        if negative_valid is not None:
            metrics["hard_negative_accuracy"] = _hard_negative_accuracy(image, captions, negatives, negative_valid)
        return loss, metrics


def _hard_negative_accuracy(image: Tensor, captions: Tensor, negatives: Tensor, valid: Tensor) -> Tensor:
    """The share of the images with a hard negative whose caption scores above it (0 when none has one)."""
    with torch.no_grad():
        wins = (image * captions).sum(-1) > (image * negatives).sum(-1)
        return wins[valid].float().sum() / valid.sum().clamp_min(1)
