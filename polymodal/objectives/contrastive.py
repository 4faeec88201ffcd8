"""CLIP's symmetric contrastive loss, with the negatives of every data-parallel rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

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

    Metrics: ``image_to_text_accuracy`` and ``text_to_image_accuracy`` (top-1 over all gathered candidates, this
    rank's rows) and ``logit_scale``.
    """

    def __init__(self, image_key: str = "image_embeds", text_key: str = "text_embeds", scale_key: str = "logit_scale"):
        super().__init__(read_keys=[image_key, text_key, scale_key])

    def forward(self, data: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_key, text_key, scale_key = self.read_keys
        image, text, scale = data[image_key], data[text_key], data[scale_key]
        if image.dim() != 2 or image.shape != text.shape:
            shapes = f"{tuple(image.shape)} and {tuple(text.shape)}"
            raise ValueError(f"{image_key} and {text_key} must both be [B, D] with the same shape, got {shapes}")
        if scale.numel() != 1:
            raise ValueError(f"{scale_key} must be a scalar, got shape {tuple(scale.shape)}")
        with torch.autocast(device_type=image.device.type, enabled=False):
            image, text, scale = image.float(), text.float(), scale.float().reshape(())
            group = data_parallel_group()
            all_image = image if group is None else all_gather_with_grad(image, 0, group)
            all_text = text if group is None else all_gather_with_grad(text, 0, group)
            rank = 0 if group is None else dist.get_rank(group)
            labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
            logits_per_image = scale * image @ all_text.T
            logits_per_text = scale * text @ all_image.T
            loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        metrics = {
            "image_to_text_accuracy": (logits_per_image.detach().argmax(-1) == labels).float().mean(),
            "text_to_image_accuracy": (logits_per_text.detach().argmax(-1) == labels).float().mean(),
            "logit_scale": scale.detach(),
        }
        return loss, metrics
