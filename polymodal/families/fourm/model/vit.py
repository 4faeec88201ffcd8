"""FourMViT: the 4M encoder as a plain RGB ViT, loading 4M weights by name, and a classifier built on it.

A :class:`FourMViT` is made of FourM's own encoder parts: the ``rgb@<res>`` pixel embedding (patches flattened in
``(ph, pw, c)`` order -> bias-free ``proj``, plus fixed 2D sin-cos positions and the modality embedding), the
optional register tokens, and the encoder blocks with their final norm. Every patch is an input and nothing is
masked. Its parameter names are FourM's (``encoder_embeddings.rgb@<res>.*``, ``encoder.*``, ``register_tokens``),
so a FourM state dict (from training, an export, or :func:`~polymodal.families.fourm.upstream.load_upstream_checkpoint`)
loads into it without renaming; :func:`load_fourm_weights` ignores the decoder side and fails on anything missing.

Pixels are expected as 4M's data gives them: ImageNet-normalised
(:func:`~polymodal.families.fourm.samples.normalise_rgb`).
:class:`FourMViTClassifier` reads ``[0, 1]`` rgb from the data_dict (e.g. :class:`MultimodalData` over an ImageFolder),
normalises it with the same constants, and writes logits from the head 4M's maintainers suggest for classification
(apple/ml-4m issue #2): mean over the patch tokens -> LayerNorm -> Linear.

From YAML (see configs/fourm/vit_classify_tiny.yaml)::

    model:
      _target_: polymodal.families.fourm.model.vit.FourMViTClassifier
      num_classes: 5
      vit: {_target_: polymodal.families.fourm.model.vit.build_fourm_vit, size: tiny, image_size: 64, patch_size: 8}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polymodal.checkpoint.weights import read_weights
from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.families.fourm.model.embeddings import INIT_STD, ImagePatchEncoderEmbedding
from polymodal.families.fourm.model.fourm import FourM
from polymodal.families.fourm.model.sizes import build_fourm
from polymodal.families.fourm.samples import normalise_rgb
from polymodal.models.layers.block import Transformer
from polymodal.models.layers.init import init_weights
from polymodal.models.layers.norm import LayerNorm
from polymodal.models.meta import DataDict, ReadWriteBlock

PIXEL_STEM = "rgb"
# FourM state-dict entries a FourMViT has no place for (besides other modalities' encoder embeddings).
FOURM_ONLY_PREFIXES = ("decoder.", "decoder_embeddings.", "context_proj.", "mask_token")
# FourM arguments that only concern the decoder side or the masked-batch selection.
DECODER_ARGUMENTS = ("decoder_depth", "drop_path_decoder", "num_encoder_tokens", "num_decoder_tokens",
                     "tie_embeddings", "loss_chunk_size", "loss_z_loss_weight", "logits_key", "targets_key",
                     "loss_key")  # fmt: skip


class ClassificationHead(nn.Module):
    """``[B, N, D]`` tokens -> mean over N -> LayerNorm -> Linear -> ``[B, num_classes]`` logits."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.norm = LayerNorm(dim)
        self.proj = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.proj(self.norm(tokens.mean(dim=1)))


class FourMViT(nn.Module):
    """FourM's rgb encoder path: ``[B, C, H, W]`` normalised pixels -> ``output_head([B, N, D] patch tokens)``.

    Register tokens (if any) are prepended as in FourM and dropped from the output, so N is always the number of
    patches. Build with :func:`build_fourm_vit` or :func:`from_fourm`.

    Args:
        embedding: a FourM pixel encoder embedding (its ``spec`` names the modality, e.g. ``rgb@224``).
        encoder: a FourM encoder (blocks + final norm).
        register_tokens: FourM's ``(1, R, D)`` register tokens, or None.
        output_head: applied to the patch tokens (default: identity).
    """

    def __init__(
        self,
        embedding: ImagePatchEncoderEmbedding,
        encoder: Transformer,
        register_tokens: nn.Parameter | None = None,
        output_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(embedding, ImagePatchEncoderEmbedding):
            raise ValueError(f"FourMViT needs a pixel (patch) embedding, got {type(embedding).__name__}")
        self.modality = embedding.spec.name
        self.dim = embedding.dim
        self.encoder_embeddings = nn.ModuleDict({self.modality: embedding})
        self.encoder = encoder
        self.register_tokens = register_tokens
        self.output_head = output_head if output_head is not None else nn.Identity()

    @property
    def num_register_tokens(self) -> int:
        return 0 if self.register_tokens is None else self.register_tokens.shape[1]

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """4M's init: xavier-uniform Linears with zero biases, unit norms, N(0, 0.02) modality embedding and register
        tokens, recomputed sin-cos positions. Works after a meta-device build."""
        init_weights(self, scheme="xavier")
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=INIT_STD)

    def forward(self, pixels: Tensor) -> Tensor:
        embedding = self.encoder_embeddings[self.modality]
        every_patch = torch.ones(pixels.shape[0], embedding.pos_emb.shape[1], dtype=torch.bool, device=pixels.device)
        x, emb = embedding(pixels, every_patch)
        tokens = x + emb
        if self.register_tokens is not None:
            tokens = torch.cat([self.register_tokens.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.encoder(tokens)
        return self.output_head(tokens[:, self.num_register_tokens :])


def build_fourm_vit(
    size: str,
    variant: str = "swiglu_nobias",
    image_size: int = 224,
    patch_size: int = 16,
    num_channels: int = 3,
    num_register_tokens: int = 0,
    num_classes: int | None = None,
    **overrides: Any,
) -> FourMViT:
    """An initialised FourMViT of a named 4M ``size`` / ``variant`` on ``rgb@<image_size>`` pixels.

    ``overrides`` replace FourM encoder arguments (``dim``, ``encoder_depth``, ``num_heads``, ``drop_path_encoder``,
    ``mlp_ratio``, ...). ``num_classes`` puts a :class:`ClassificationHead` on the output (logits instead of tokens).
    The parts are taken from a FourM built on the meta device (with a throwaway 2-code target, as FourM needs one),
    so their structure and names are FourM's by construction; they are then materialised on the current default
    device (still meta under a meta-device build) and initialised.
    """
    decoder_only = sorted(set(overrides) & set(DECODER_ARGUMENTS))
    if decoder_only:
        raise ValueError(f"{decoder_only} are not arguments of the encoder-only FourMViT")
    modality = f"{PIXEL_STEM}@{image_size}"
    placeholder_target = f"tok_{PIXEL_STEM}@{image_size}"
    registry = ModalityRegistry.from_config(
        [modality, placeholder_target],
        {
            modality: {"patch_size": patch_size, "num_channels": num_channels},
            placeholder_target: {"vocab_size": 2, "patch_size": patch_size, "encoder": False},
        },
    )
    device = torch.empty(0).device  # the ambient default device
    with torch.device("meta"):
        fourm = build_fourm(size, registry, variant, decoder_depth=1, num_register_tokens=num_register_tokens,
                            **overrides)  # fmt: skip
        head = ClassificationHead(fourm.dim, num_classes) if num_classes is not None else None
    vit = FourMViT(fourm.encoder_embeddings[modality], fourm.encoder, fourm.register_tokens, head)
    vit.to_empty(device=device)
    vit.initialize_weights()
    return vit


def from_fourm(model: FourM, modality: str | None = None, output_head: nn.Module | None = None) -> FourMViT:
    """A FourMViT holding copies of ``model``'s encoder, register tokens and pixel embedding ``modality`` (default:
    the model's only pixel input modality). For a run or export directory, pass
    ``load_trained_model(path)[0]`` (:mod:`polymodal.checkpoint.weights`)."""
    pixels = [name for name, spec in model.modalities.items() if spec.is_pixels and spec.encoder]
    if modality is None:
        if len(pixels) != 1:
            raise ValueError(f"the 4M model has pixel input modalities {pixels}; name the one to use (modality=)")
        modality = pixels[0]
    elif modality not in pixels:
        raise ValueError(f"modality {modality!r} is not a pixel input of the 4M model; its pixel inputs: {pixels}")
    return FourMViT(
        copy.deepcopy(model.encoder_embeddings[modality]),
        copy.deepcopy(model.encoder),
        copy.deepcopy(model.register_tokens),
        output_head,
    )


def _is_fourm_only(key: str, modality: str) -> bool:
    """A FourM entry the ViT has no place for: decoder side, mask token, other modalities' encoder embeddings."""
    if key.startswith(FOURM_ONLY_PREFIXES):
        return True
    return key.startswith("encoder_embeddings.") and not key.startswith(f"encoder_embeddings.{modality}.")


@torch.no_grad()
def load_fourm_weights(vit: FourMViT, source: Mapping[str, Tensor] | str | Path) -> list[str]:
    """Fill ``vit`` from a FourM state dict, a ``.safetensors`` file or an export directory.

    FourM-only entries (decoder, mask token, other modalities' embeddings) are skipped by name. Returns the remaining
    checkpoint keys the ViT has no place for. Raises a ValueError naming the ViT parameters the source
    lacks (the output head excepted) or whose shapes differ.
    """
    state = dict(source) if isinstance(source, Mapping) else read_weights(source)
    own = vit.state_dict()
    missing = sorted(key for key in own if key not in state and not key.startswith("output_head."))
    misshapen = [f"{key}: source {tuple(state[key].shape)} vs ViT {tuple(value.shape)}"
                 for key, value in own.items() if key in state and state[key].shape != value.shape]  # fmt: skip
    if missing or misshapen:
        raise ValueError(f"4M weights do not fit the FourMViT ({vit.modality}): missing {missing}; "
                         f"shape mismatches {misshapen}")  # fmt: skip
    unexpected = sorted(key for key in state if key not in own and not _is_fourm_only(key, vit.modality))
    vit.load_state_dict({key: value for key, value in state.items() if key in own}, strict=False)
    return unexpected


class FourMViTClassifier(ReadWriteBlock):
    """Image classification on a FourMViT: reads rgb ``[B, 3, H, W]`` in ``[0, 1]``, writes ``[B, num_classes]``
    logits (mean-pool -> LayerNorm -> Linear over the ViT's patch tokens).

    Parameters are ``vit.<FourM name>`` and ``head.*``: initialise from a 4M run with ``init_from`` keeping the
    encoder and rgb embedding keys and renaming ``^`` -> ``vit.``.

    Args:
        vit: the backbone (its output head should return tokens, the default).
        num_classes: number of classes.
        image_key / logits_key: data_dict keys read and written.
        normalize: apply 4M's ImageNet normalisation to the pixels first (False: they already are).
    """

    def __init__(
        self,
        vit: FourMViT,
        num_classes: int,
        image_key: str = "rgb",
        logits_key: str = "logits",
        normalize: bool = True,
    ) -> None:
        super().__init__(read_keys=image_key, write_keys=logits_key)
        self.vit = vit
        self.head = ClassificationHead(vit.dim, num_classes)
        self.normalize = normalize
        init_weights(self.head, scheme="xavier")

    @torch.no_grad()
    def initialize_weights(self) -> None:
        self.vit.initialize_weights()
        init_weights(self.head, scheme="xavier")

    def forward(self, data: DataDict) -> DataDict:
        pixels = data[self.read_keys[0]]
        if self.normalize:
            pixels = normalise_rgb(pixels)
        data[self.write_keys[0]] = self.head(self.vit(pixels))
        return data
