"""CLIP: an image tower and a text tower mapping into one embedding space, and the learnable logit scale.

The towers follow OpenAI's CLIP (and Hugging Face's ``CLIPModel``, whose weights :mod:`polymodal.models.hf_clip`
converts): pre-norm blocks with biased LayerNorms, biased attention projections and a GELU or QuickGELU MLP.

image tower: patches -> class token prepended -> learned positions -> ``ln_pre`` -> blocks -> final norm (``ln_post``;
             a LayerNorm is per token, so normalising every token and taking the class token equals normalising the
             class token alone) -> class token -> projection -> L2-normalised ``image_embeds``
text tower:  tokens -> learned positions -> causal blocks -> final norm -> the hidden state at the end-of-text token
             (:class:`EndOfTextPool`) -> projection -> L2-normalised ``text_embeds``
logit scale: ``exp(log_scale)`` clamped to [1, ``max_logit_scale``] under ``logit_scale``

The image preprocessing is four small blocks (patchify, class token, positions, ``ln_pre``) so that each can be
swapped on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.models.flops import matmul_params, transformer_train_flops_per_token
from polymodal.models.layers.block import Transformer, build_transformer
from polymodal.models.layers.init import init_weights
from polymodal.models.layers.norm import LayerNorm
from polymodal.models.layers.patch_embed import PatchEmbed
from polymodal.models.llm import TokenEmbedding
from polymodal.models.meta import DataDict, MetaModel, ModelSeries, ModuleBlock, ReadWriteBlock
from polymodal.models.parts import TransformerTrunk
from polymodal.models.resnet import (
    build_clip_resnet_tower,
    initialize_resnet_tower,
    is_resnet_tower,
    pixel_standardisation,
    resnet_tower_train_flops,
)

Activation = Literal["gelu", "quick_gelu"]
DEFAULT_TEMPERATURE = 0.07  # CLIP's initial softmax temperature: logit scale log(1 / 0.07)
DEFAULT_MAX_LOGIT_SCALE = 100.0


class LearnedPositions(ReadWriteBlock):
    """Adds a learned embedding of positions ``0 .. T-1`` to tokens ``[B, T, D]``.

    ``exact``: ``T`` must equal ``num_positions`` (an image grid, whose positions mean nothing for another size);
    otherwise any ``T <= num_positions`` (text shorter than the context). ``std``: the normal init's deviation.
    """

    def __init__(
        self, num_positions: int, dim: int, read_key: str, write_key: str, exact: bool = False, std: float = 0.01
    ):
        super().__init__(read_key, write_key)
        self.weight = nn.Parameter(torch.empty(num_positions, dim))
        self.exact, self.std = exact, std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.std)

    def forward(self, data: DataDict) -> DataDict:
        tokens = data[self.read_keys[0]]
        length, available = tokens.shape[1], self.weight.shape[0]
        if length > available or (self.exact and length != available):
            wanted = f"exactly {available}" if self.exact else f"at most {available}"
            raise ValueError(f"'{self.read_keys[0]}' has {length} positions; this embedding takes {wanted}")
        data[self.write_keys[0]] = tokens + self.weight[:length].to(tokens.dtype)
        return data


class PrependClassToken(ReadWriteBlock):
    """``[B, T, D] -> [B, 1 + T, D]``: a learned class token in front of every sequence."""

    def __init__(self, dim: int, read_key: str, write_key: str, std: float | None = None):
        super().__init__(read_key, write_key)
        self.token = nn.Parameter(torch.empty(dim))
        self.std = dim**-0.5 if std is None else std  # OpenAI CLIP's scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.token, std=self.std)

    def forward(self, data: DataDict) -> DataDict:
        tokens = data[self.read_keys[0]]
        token = self.token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        data[self.write_keys[0]] = torch.cat([token, tokens], dim=1)
        return data


class SelectToken(ReadWriteBlock):
    """``[B, T, D] -> [B, D]``: the token at ``index`` (0: the class token)."""

    def __init__(self, read_key: str, write_key: str, index: int = 0):
        super().__init__(read_key, write_key)
        self.index = index

    def forward(self, data: DataDict) -> DataDict:
        data[self.write_keys[0]] = data[self.read_keys[0]][:, self.index]
        return data


def end_of_text_positions(ids: Tensor, eot_token_id: int | None) -> Tensor:
    """The position of each row's end-of-text token in ``ids`` ``[B, T]``.

    ``eot_token_id=None``: the position of the row's largest id (OpenAI CLIP's rule: its end-of-text token, 49407,
    is the last id of the vocabulary, and padding is 0). An id: the first position holding it (a pad token equal to
    it comes later); a row without it is a ValueError.
    """
    if ids.dim() != 2:
        raise ValueError(f"token ids must be [B, T], got shape {tuple(ids.shape)}")
    if eot_token_id is None:
        return ids.argmax(dim=-1)
    is_eot = ids == eot_token_id
    missing = ~is_eot.any(dim=-1)
    if missing.any():
        rows = missing.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows[:5]} hold no end-of-text token {eot_token_id}")
    return is_eot.int().argmax(dim=-1)  # argmax returns the first maximum


class EndOfTextPool(ReadWriteBlock):
    """``[B, T, D] -> [B, D]``: the hidden state at each row's end-of-text position.

    The positions are found in the token ids under ``ids_key`` (:func:`end_of_text_positions`), or, with
    ``eot_key``, read as given: int64 ``[B]`` (the data's ``caption_eot``), whatever the end token's id.
    """

    def __init__(
        self,
        hidden_key: str,
        ids_key: str,
        write_key: str,
        eot_token_id: int | None = None,
        eot_key: str | None = None,
    ):
        if eot_key is not None and eot_token_id is not None:
            raise ValueError("give the end-of-text positions (eot_key) or the token to find them by (eot_token_id)")
        super().__init__([hidden_key, eot_key or ids_key], write_key)
        self.eot_token_id, self.positions_given = eot_token_id, eot_key is not None

    def forward(self, data: DataDict) -> DataDict:
        hidden_key, source_key = self.read_keys
        hidden = data[hidden_key]
        if self.positions_given:
            positions = data[source_key]
            if positions.shape != hidden.shape[:1]:
                raise ValueError(
                    f"'{source_key}' must be [B]={hidden.shape[0]} positions, got {tuple(positions.shape)}"
                )
        else:
            positions = end_of_text_positions(data[source_key], self.eot_token_id)
        data[self.write_keys[0]] = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]
        return data


class NormalizedProjection(ReadWriteBlock):
    """A bias-free linear map into the joint embedding space, then L2 normalisation."""

    def __init__(self, dim: int, embed_dim: int, read_key: str, write_key: str):
        super().__init__(read_key, write_key)
        self.proj = nn.Linear(dim, embed_dim, bias=False)

    def forward(self, data: DataDict) -> DataDict:
        data[self.write_keys[0]] = F.normalize(self.proj(data[self.read_keys[0]]), dim=-1)
        return data


class LogitScale(ReadWriteBlock):
    """Writes the contrastive logit scale ``exp(log_scale)``, clamped to [1, ``max_scale``] as CLIP does.

    The clamp is applied to the value, not to the parameter in place (a parameter changed inside the forward would
    fight FSDP and autograd): past the bound the gradient is 0, so the scale stays there. The parameter has shape
    ``[1]`` because FSDP2 cannot shard a 0-dim parameter.
    """

    def __init__(
        self,
        init_temperature: float = DEFAULT_TEMPERATURE,
        max_scale: float = DEFAULT_MAX_LOGIT_SCALE,
        learnable: bool = True,
        write_key: str = "logit_scale",
    ):
        super().__init__(write_keys=write_key)
        if not 0 < init_temperature <= 1 or max_scale < 1:
            raise ValueError(f"need 0 < init_temperature <= 1 and max_scale >= 1, got {init_temperature}, {max_scale}")
        self.init_temperature, self.max_scale = init_temperature, max_scale
        self.log_scale = nn.Parameter(torch.empty(1), requires_grad=learnable)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.log_scale, math.log(1.0 / self.init_temperature))

    def forward(self, data: DataDict) -> DataDict:
        data[self.write_keys[0]] = self.log_scale.clamp(0.0, math.log(self.max_scale)).exp().squeeze(0)
        return data


def _tower_transformer(
    dim: int, depth: int, num_heads: int, activation: Activation, norm_eps: float, ffn_dim: int | None, mlp_ratio: float
) -> Transformer:
    return build_transformer(
        dim, depth, num_heads, mlp=activation, mlp_ratio=mlp_ratio, ffn_dim=ffn_dim, norm="layernorm",
        norm_eps=norm_eps, rope=None, qkv_bias=True, out_bias=True, final_norm=True,
    )  # fmt: skip


def build_clip_image_tower(
    image_size: int,
    patch_size: int,
    dim: int,
    depth: int,
    num_heads: int,
    embed_dim: int,
    activation: Activation = "quick_gelu",
    norm_eps: float = 1e-5,
    ffn_dim: int | None = None,
    mlp_ratio: float = 4.0,
    in_channels: int = 3,
    image_key: str = "image",
    write_key: str = "image_embeds",
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> MetaModel:
    """The ViT image tower: ``image`` ``[B, C, image_size, image_size]`` -> ``image_embeds`` ``[B, embed_dim]``.

    ``pixel_mean``/``pixel_std``: standardise the pixels per channel first (CLIP's preprocessing, for data that
    gives pixels in [0, 1]); the block comes first, so the other blocks' indices are then one higher than the
    converters' (:mod:`polymodal.models.hf_clip`) expect, whose models take standardised pixels.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
    hidden = "image_hidden"
    num_patches = (image_size // patch_size) ** 2
    standardise, image_key = pixel_standardisation(image_key, pixel_mean, pixel_std)
    preprocessor = [
        *standardise,
        ModuleBlock(PatchEmbed(patch_size, in_channels, dim, bias=False), image_key, hidden),
        PrependClassToken(dim, hidden, hidden),
        LearnedPositions(num_patches + 1, dim, hidden, hidden, exact=True, std=dim**-0.5),
        ModuleBlock(LayerNorm(dim, eps=norm_eps), hidden, hidden),  # ln_pre
    ]
    transformer = _tower_transformer(dim, depth, num_heads, activation, norm_eps, ffn_dim, mlp_ratio)
    return MetaModel(
        preprocessor=preprocessor,
        trunk=TransformerTrunk(transformer, hidden, hidden, mask_key=None, position_key=None, cache_key=None),
        postprocessor=SelectToken(hidden, "image_pooled"),
        head=NormalizedProjection(dim, embed_dim, "image_pooled", write_key),
    )


def build_clip_text_tower(
    vocab_size: int,
    context_length: int,
    dim: int,
    depth: int,
    num_heads: int,
    embed_dim: int,
    activation: Activation = "quick_gelu",
    norm_eps: float = 1e-5,
    ffn_dim: int | None = None,
    mlp_ratio: float = 4.0,
    eot_token_id: int | None = None,
    ids_key: str = "text_ids",
    eot_key: str | None = None,
    write_key: str = "text_embeds",
) -> MetaModel:
    """The causal text tower: ``ids_key`` ``[B, T <= context_length]`` -> ``text_embeds`` ``[B, embed_dim]``,
    pooled at the end-of-text token: the position under ``eot_key`` if given (the multimodal data's
    ``caption_eot``), else the one ``eot_token_id`` finds (:func:`end_of_text_positions`). No padding mask is
    needed: padding follows the end-of-text token, which the causal mask keeps from seeing it."""
    hidden = "text_hidden"
    transformer = _tower_transformer(dim, depth, num_heads, activation, norm_eps, ffn_dim, mlp_ratio)
    return MetaModel(
        preprocessor=[
            TokenEmbedding(vocab_size, dim, ids_key, hidden),
            LearnedPositions(context_length, dim, hidden, hidden),
        ],
        trunk=TransformerTrunk(
            transformer, hidden, hidden, mask_key=None, position_key=None, is_causal=True, cache_key=None
        ),
        postprocessor=EndOfTextPool(hidden, ids_key, "text_pooled", eot_token_id, eot_key),
        head=NormalizedProjection(dim, embed_dim, "text_pooled", write_key),
    )


def tower_train_flops(tower: MetaModel, sequences: int, input_tokens: int, seq_len: int) -> float:
    """Forward + backward FLOPs of one tower (:mod:`polymodal.models.flops` conventions) on ``sequences`` inputs:
    its preprocessor's matmuls (the patch projection) see ``input_tokens`` per input, the trunk ``seq_len`` tokens
    (weights and attention), the head one pooled token."""
    transformer: Transformer = tower.trunk.transformer
    dim = transformer.blocks[0].attn.q_proj.in_features
    trunk = seq_len * transformer_train_flops_per_token(
        matmul_params(tower.trunk), len(transformer.blocks), dim, seq_len
    )
    ends = 6.0 * (matmul_params(tower.preprocessor) * input_tokens + matmul_params(tower.head))
    return sequences * (trunk + ends)


class CLIP(ModelSeries):
    """``image_tower``, ``text_tower`` and ``logit_scale``, run in that order (``forward(data, only="text_tower")``
    runs one tower, e.g. to embed zero-shot class prompts)."""

    def __init__(self, image_tower: MetaModel, text_tower: MetaModel, logit_scale: LogitScale):
        super().__init__({"image_tower": image_tower, "text_tower": text_tower, "logit_scale": logit_scale})

    def train_flops(self, batch: DataDict) -> float:
        """Forward + backward FLOPs of both towers on ``batch`` (:func:`tower_train_flops`): the image tower runs on
        its patches and the class token, the text tower on every position of the ids (padding too). The loss's
        ``B x B`` logits are left out."""
        image_tower, text_tower = self.models["image_tower"], self.models["text_tower"]
        images, ids = batch[image_tower.read_keys[0]], batch[text_tower.read_keys[0]]
        text_flops = tower_train_flops(text_tower, ids.shape[0], ids.shape[1], ids.shape[1])
        if is_resnet_tower(image_tower):
            return resnet_tower_train_flops(image_tower, images.shape[0], images.shape[-1]) + text_flops
        patch_embed = next(module for module in image_tower.modules() if isinstance(module, PatchEmbed))
        patches = math.prod(patch_embed.grid_size(tuple(images.shape[-2:])))
        return tower_train_flops(image_tower, images.shape[0], patches, patches + 1) + text_flops

    def initialize_weights(self) -> None:
        """Normal(0, 0.02) linears, embeddings and patch projection, with GPT-2 depth scaling of each transformer
        tower's residual projections; positions, class token and logit scale as their blocks define (OpenAI CLIP's);
        a ResNet image tower as OpenAI's CLIP (:func:`~polymodal.models.resnet.initialize_resnet_tower`)."""
        for tower in (self.models["image_tower"], self.models["text_tower"]):
            if is_resnet_tower(tower):
                initialize_resnet_tower(tower)
            else:
                init_weights(tower, scheme="normal", std=0.02, depth=len(tower.trunk.transformer.blocks))
        self.models["logit_scale"].reset_parameters()


IMAGE_TOWERS = {"vit": build_clip_image_tower, "resnet": build_clip_resnet_tower}


def build_clip(
    embed_dim: int,
    vision: Mapping[str, Any],
    text: Mapping[str, Any],
    init_temperature: float = DEFAULT_TEMPERATURE,
    max_logit_scale: float = DEFAULT_MAX_LOGIT_SCALE,
    learnable_temperature: bool = True,
    vision_tower: Literal["vit", "resnet"] = "vit",
) -> CLIP:
    """A CLIP model: ``vision`` and ``text`` are the arguments of :func:`build_clip_image_tower` (``vision_tower:
    resnet``: of :func:`~polymodal.models.resnet.build_clip_resnet_tower`) and :func:`build_clip_text_tower`
    (without ``embed_dim``, the shared embedding width)."""
    if vision_tower not in IMAGE_TOWERS:
        raise ValueError(f"unknown vision_tower {vision_tower!r}; expected one of {list(IMAGE_TOWERS)}")
    model = CLIP(
        IMAGE_TOWERS[vision_tower](embed_dim=embed_dim, **dict(vision)),
        build_clip_text_tower(embed_dim=embed_dim, **dict(text)),
        LogitScale(init_temperature, max_logit_scale, learnable_temperature),
    )
    model.initialize_weights()
    return model
