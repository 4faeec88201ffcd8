"""The image tokenizer's training objective: reconstruction + quantizer loss, with PSNR / mIoU and codebook metrics.

Reads what :class:`~polymodal.tokenizers.image.tokenizer.ImageTokenizer` writes for one modality. The
reconstruction term compares ``<modality>_recon`` with ``<modality>`` in natural units, except depth, which is
compared in log-depth (metres span orders of magnitude; an error of 10 cm matters at 1 m, not at 20 m), and
semseg, whose logits get cross-entropy against the class ids.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from polymodal.models.meta import DataDict, Objective
from polymodal.tokenizers.image.metrics import chroma, codebook_usage, mean_iou, psnr
from polymodal.tokenizers.image.quantizers import codebook_perplexity
from polymodal.tokenizers.image.tokenizer import DEFAULT_MIN_DEPTH, MODALITIES

PIXEL_LOSSES = ("l1", "mse")
DEFAULT_PSNR_RANGE = {"rgb": 1.0, "normal": 2.0}  # depth: each target's own max - min unless given


class ReconstructionLoss(Objective):
    """``recon + vq_weight · <modality>_vq_loss``; metrics ``recon_loss``, ``vq_loss``, ``psnr`` (rgb, depth,
    normal; natural units) or ``miou`` (semseg), ``codebook_usage`` and ``perplexity``.

    Args:
        modality: ``rgb``, ``depth``, ``normal`` or ``semseg``.
        pixel_loss: ``l1`` or ``mse`` for the continuous modalities (semseg always uses cross-entropy).
        vq_weight: weight of the quantizer's loss.
        psnr_range: the PSNR peak value; default 1 for rgb, 2 for normals, each target's range for depth.
        chroma_weight: rgb only: extra weight on the chroma error (each pixel minus its grey level). A small
            codebook learns luminance first and averages hues to grey for a long time; this term makes a wrong
            hue cost as much as a wrong brightness.
    """

    def __init__(
        self,
        modality: str,
        pixel_loss: str = "l1",
        vq_weight: float = 1.0,
        psnr_range: float | None = None,
        chroma_weight: float = 0.0,
    ):
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r} for ReconstructionLoss; expected one of {MODALITIES}")
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"unknown pixel_loss {pixel_loss!r}; expected one of {PIXEL_LOSSES}")
        super().__init__(read_keys=[modality, f"{modality}_recon", f"{modality}_vq_loss", f"{modality}_vq_usage"])
        self.modality = modality
        self.pixel_loss = pixel_loss
        self.vq_weight = vq_weight
        self.psnr_range = psnr_range if psnr_range is not None else DEFAULT_PSNR_RANGE.get(modality)
        if chroma_weight < 0 or (chroma_weight and modality != "rgb"):
            raise ValueError(f"chroma_weight must be >= 0 and only applies to rgb, got {chroma_weight} for {modality}")
        self.chroma_weight = chroma_weight

    def _pixel_loss(self, recon: Tensor, target: Tensor) -> Tensor:
        if self.modality == "depth":
            recon, target = recon.clamp_min(DEFAULT_MIN_DEPTH).log(), target.clamp_min(DEFAULT_MIN_DEPTH).log()
        distance = F.l1_loss if self.pixel_loss == "l1" else F.mse_loss
        loss = distance(recon, target)
        if self.chroma_weight:
            loss = loss + self.chroma_weight * distance(chroma(recon), chroma(target))
        return loss

    def forward(self, data: DataDict) -> tuple[Tensor, dict[str, Tensor]]:
        target_key, recon_key, vq_loss_key, usage_key = self.read_keys
        target, recon = data[target_key], data[recon_key].float()
        if self.modality == "semseg":
            recon_loss = F.cross_entropy(recon, target.long())
            quality = {"miou": mean_iou(recon.detach().argmax(dim=1), target.long(), recon.shape[1])}
        else:
            target = target.float()
            recon_loss = self._pixel_loss(recon, target)
            quality = {"psnr": psnr(recon.detach(), target, self.psnr_range)}
        vq_loss = data[vq_loss_key].float()
        usage = data[usage_key].detach().float()
        metrics = {
            "recon_loss": recon_loss.detach(),
            "vq_loss": vq_loss.detach(),
            **quality,
            "codebook_usage": codebook_usage(usage),
            "perplexity": codebook_perplexity(usage),
        }
        return recon_loss + self.vq_weight * vq_loss, metrics
