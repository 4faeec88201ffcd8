"""The 4M encoder-decoder: any subset of modality tokens in, any other subset predicted.

A batch is a dict keyed by modality name; ``batch[m] = {"tensor", "is_input", "is_target"}`` (see
:mod:`polymodal.families.fourm.model`). The forward pass is split into the steps a sampler reuses::

    inputs  = model.embed_inputs(batch)           # selected input tokens first, truncated, padded
    context = model.decoder_context(model.encode(inputs), inputs)
    queries = model.embed_targets(batch)          # selected target positions first, truncated, padded
    hidden  = model.decode(queries, context, inputs.valid)
    logits, targets = model.predict(hidden, queries)   # {modality: [n_m, V_m]}, {modality: [n_m]}

Training does not make those logits: :meth:`FourM.forward` hands each modality's decoder output rows and its head's
weight to :func:`~polymodal.models.token_loss.chunked_token_loss` (:meth:`FourM.loss_sums`), which projects
``loss_chunk_size`` rows at a time, and writes the per-modality sums that ``FourMLoss`` combines.

Selection keeps, per sample, the selected tokens first in concatenation order (batch dict order, then position)
and cuts the sequence at ``num_encoder_tokens`` / ``num_decoder_tokens`` (None: no cut). Which targets survive a
cut therefore follows the dict order; ``FourMMasking`` shuffles it per batch from its generator, as upstream
shuffles its modality order every forward pass. Rows with fewer selected
tokens are padded: padding is zeroed, never attended as a key, and padded query rows stay finite.

Decoder self-attention is built from each kept token's modality index and kind: a token attends the valid tokens
of its own modality, all of them for an image target (MaskGIT-style), those at or before itself for a sequence
target (teacher forcing). Upstream builds the same mask from a cumsum-compressed per-token count (an image's target
count on its first target, 1 on every sequence target) plus modality separation: because selection is a stable
sort, each modality's kept targets form one contiguous run in their original order, so ``key < cumsum(count)[query]``
is "the whole run" for an image and "up to the query" for a sequence. Building it directly also makes it
independent of the modality order, which upstream shuffles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, partial

import torch
from torch import Tensor, nn

from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.families.fourm.model.embeddings import INIT_STD, decoder_embedding, encoder_embedding
from polymodal.families.fourm.model.flops import FourMMatmuls, fourm_train_flops
from polymodal.models.layers.attention import Attention
from polymodal.models.layers.block import Transformer, TransformerBlock
from polymodal.models.layers.cross_attention import CrossAttention, CrossAttentionBlock, CrossAttentionTransformer
from polymodal.models.layers.mask_rules import AttentionImpl, MaskMod, MaskRule, check_attention_impl, resolve_mask
from polymodal.models.layers.masks import padding_mask
from polymodal.models.layers.mlp import MLP, SwiGLU
from polymodal.models.layers.norm import LayerNorm
from polymodal.models.meta import DataDict, ReadWriteBlock
from polymodal.models.token_loss import TokenLossSums, chunked_token_loss

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


@dataclass
class EncoderTokens:
    """The encoder's input sequence after selection: ``[B, N, D]`` content and position+modality embeddings (both
    zero on padding; register tokens first, with zero ``emb``) and ``[B, N]`` validity."""

    tokens: Tensor
    emb: Tensor
    valid: Tensor


@dataclass
class DecoderQueries:
    """The decoder's query sequence after selection.

    ``tokens``/``emb`` ``[B, M, D]`` (zero on padding); ``valid`` ``[B, M]``; ``target_ids`` ``[B, M]`` (0 on
    padding); ``modality_index`` ``[B, M]``, the index into ``modalities`` (-1 on padding); ``causal`` ``[B, M]``,
    True for tokens of sequence modalities.
    """

    tokens: Tensor
    emb: Tensor
    valid: Tensor
    target_ids: Tensor
    modality_index: Tensor
    causal: Tensor
    modalities: tuple[str, ...]


def valid_first_order(valid: Tensor, budget: int | None) -> Tensor:
    """``[B, K]`` indices putting each row's valid positions first, both groups in original order; cut at ``budget``."""
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)
    return order if budget is None else order[:, :budget]


def gather_rows(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[b, index[b, k]]`` for ``[B, T]`` or ``[B, T, D]`` tensors."""
    if tensor.dim() == 3:
        index = index[..., None].expand(-1, -1, tensor.shape[-1])
    return tensor.gather(1, index)


def decoder_self_attention_mask(queries: DecoderQueries) -> Tensor:
    """``[B, 1, M, M]`` (True = may attend): same modality, valid key, and key <= query for sequence modalities."""
    index = queries.modality_index
    positions = torch.arange(index.shape[1], device=index.device)
    allowed = (index[:, :, None] == index[:, None, :]) & queries.valid[:, None, :]
    after_query = positions[None, :] > positions[:, None]
    allowed &= ~(queries.causal[:, :, None] & after_query)
    return allowed[:, None]


@dataclass(frozen=True, eq=False)
class DecoderSelfAttentionRule(MaskRule):
    """:func:`decoder_self_attention_mask` as a rule, so the decoder can run FlexAttention. A padding query attends
    itself (the dense path's fallback for a row with no key), so both give the same output everywhere."""

    queries: DecoderQueries

    @property
    def batch_size(self) -> int:
        return self.queries.valid.shape[0]

    @property
    def seq_len(self) -> int:
        return self.queries.valid.shape[1]

    @property
    def device(self) -> torch.device:
        return self.queries.valid.device

    def dense(self) -> Tensor:
        return decoder_self_attention_mask(self.queries)

    def mask_mod(self) -> MaskMod:
        index, valid, causal = self.queries.modality_index, self.queries.valid, self.queries.causal

        def decoder_self_attention(sample: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
            same_modality = (index[sample, query] == index[sample, key]) & valid[sample, key]
            allowed = same_modality & ~(causal[sample, query] & (key > query))
            return allowed | ((key == query) & ~valid[sample, query])

        return decoder_self_attention


class FourM(ReadWriteBlock):
    """4M: per-modality embeddings, a pre-norm encoder, a cross-attending decoder and per-modality heads.

    Args:
        modalities: the model's modalities; ``spec.encoder`` / ``spec.decoder`` say which side embeds each.
        dim, encoder_depth, decoder_depth, num_heads: trunk sizes (head dim = dim / num_heads).
        mlp: ``"gelu"`` (two-layer MLP, width ``mlp_ratio * dim``) or ``"swiglu"`` (gated, width
            ``int(2 * mlp_ratio * dim / 3)`` as upstream).
        activation: the MLP activation for ``mlp="gelu"`` (``gelu``, ``silu``, ``relu``).
        qkv_bias / proj_bias / mlp_bias / norm_bias: biases of attention inputs, attention outputs, MLPs, LayerNorms.
        qk_norm: LayerNorm (bias per ``norm_bias``) on queries and keys per head.
        drop_path_encoder / drop_path_decoder: stochastic depth, growing linearly from 0 over each stack.
        num_register_tokens: learned tokens prepended to every encoder sequence.
        num_encoder_tokens / num_decoder_tokens: sequence budgets after selection (None: keep every position).
        tie_embeddings: sequence heads share their decoder token table.
        loss_chunk_size: :meth:`forward` writes each target modality's loss sums (:meth:`loss_sums`, this many
            target rows projected at a time) under ``loss_key`` instead of its logits; None: it writes the logits.
        loss_z_loss_weight: the z-loss weight of the ``FourMLoss`` that reads the sums; given it, their gradients
            are computed in the forward pass (``polymodal.models.token_loss``: one matmul fewer per target row).
        logits_key / targets_key / loss_key: where :meth:`forward` writes ``{modality: logits}``, ``{modality: target
            ids}`` and ``{modality: TokenLossSums}``.
        attention: the decoder's self-attention kernel, ``"sdpa"`` (dense bool mask) or ``"flex"`` (a FlexAttention
            block mask of :class:`DecoderSelfAttentionRule`; fused on a GPU, forward-only on the CPU).
    """

    def __init__(
        self,
        modalities: ModalityRegistry,
        dim: int,
        encoder_depth: int,
        decoder_depth: int,
        num_heads: int,
        mlp: str = "swiglu",
        mlp_ratio: float = 4.0,
        activation: str = "gelu",
        qkv_bias: bool = False,
        proj_bias: bool = False,
        mlp_bias: bool = False,
        norm_bias: bool = False,
        qk_norm: bool = False,
        drop_path_encoder: float = 0.0,
        drop_path_decoder: float = 0.0,
        num_register_tokens: int = 0,
        num_encoder_tokens: int | None = None,
        num_decoder_tokens: int | None = None,
        tie_embeddings: bool = True,
        loss_chunk_size: int | None = 1024,
        loss_z_loss_weight: float | None = None,
        logits_key: str = "logits",
        targets_key: str = "targets",
        loss_key: str = "token_loss",
        attention: AttentionImpl = "sdpa",
    ) -> None:
        check_attention_impl(attention)
        if mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {mlp!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if encoder_depth < 1 or decoder_depth < 1:
            raise ValueError(f"encoder_depth and decoder_depth must be >= 1, got {encoder_depth}, {decoder_depth}")
        for name, budget in (("num_encoder_tokens", num_encoder_tokens), ("num_decoder_tokens", num_decoder_tokens)):
            if budget is not None and budget < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {budget}")
        if loss_chunk_size is not None and loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1 or None, got {loss_chunk_size}")
        encoders = [spec for spec in modalities.values() if spec.encoder]
        decoders = [spec for spec in modalities.values() if spec.decoder]
        if not encoders or not decoders:
            raise ValueError(f"4M needs at least one encoder and one decoder modality, got {modalities}")
        super().__init__(read_keys=list(modalities), write_keys=[logits_key, targets_key, loss_key])
        self.modalities = modalities
        self.loss_chunk_size = loss_chunk_size
        self.loss_z_loss_weight = loss_z_loss_weight
        self.dim = dim
        self.num_encoder_tokens = num_encoder_tokens
        self.num_decoder_tokens = num_decoder_tokens
        self.attention = attention

        self.encoder_embeddings = nn.ModuleDict({spec.name: encoder_embedding(spec, dim) for spec in encoders})
        self.decoder_embeddings = nn.ModuleDict(
            {
                spec.name: decoder_embedding(spec, dim, self._shared_mod_emb(spec.name), tie_embeddings)
                for spec in decoders
            }
        )
        norm = partial(LayerNorm, eps=1e-6, bias=norm_bias)
        qk_norm_factory = norm if qk_norm else False
        hidden = int(mlp_ratio * dim)

        def make_mlp() -> nn.Module:
            if mlp == "swiglu":
                return SwiGLU(dim, int(2 * hidden / 3), bias=mlp_bias)
            return MLP(dim, hidden, bias=mlp_bias, activation=ACTIVATIONS[activation])

        def self_attention() -> Attention:
            return Attention(dim, num_heads, qkv_bias=qkv_bias, out_bias=proj_bias, qk_norm=qk_norm_factory)

        self.encoder = Transformer(
            [
                TransformerBlock(dim, self_attention(), make_mlp(), norm=norm, drop_path=rate)
                for rate in _linear_rates(drop_path_encoder, encoder_depth)
            ],
            final_norm=norm(dim),
        )
        self.context_proj = nn.Linear(dim, dim)
        self.decoder = CrossAttentionTransformer(
            [
                CrossAttentionBlock(
                    dim,
                    self_attention(),
                    CrossAttention(dim, num_heads, qkv_bias=qkv_bias, out_bias=proj_bias, qk_norm=qk_norm_factory),
                    make_mlp(),
                    norm=norm,
                    drop_path=rate,
                )
                for rate in _linear_rates(drop_path_decoder, decoder_depth)
            ],
            final_norm=norm(dim),
        )
        self.mask_token = nn.Parameter(torch.empty(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.empty(1, num_register_tokens, dim)) if num_register_tokens else None
        self.initialize_weights()

    def _shared_mod_emb(self, name: str) -> nn.Parameter | None:
        return self.encoder_embeddings[name].mod_emb if name in self.encoder_embeddings else None

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """MAE-style, as 4M: xavier-uniform Linears with zero biases, N(0, 0.02) token tables, mask/register tokens
        and modality/learned position embeddings, unit norms, recomputed sin-cos tables. Separate q/k/v projections
        under xavier have the distribution upstream gives its fused qkv/kv slices. A head tied to its token table
        ends xavier-initialised, as upstream (Linears are drawn after tables). Works after a meta-device build."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=INIT_STD)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif not isinstance(module, nn.Linear) and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # norms, and ModalityEmbedding: modality/position embeddings
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=INIT_STD)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=INIT_STD)

    def _present(self, data: Mapping, embeddings: nn.ModuleDict) -> list[str]:
        present = [name for name in data if name in embeddings]
        if not present:
            raise ValueError(f"the batch has none of this model's modalities {list(embeddings)}; got {list(data)}")
        return present

    def embed_inputs(self, data: Mapping) -> EncoderTokens:
        """Embed every input modality in ``data``, keep selected tokens first (cut at ``num_encoder_tokens``),
        zero the padding and prepend the register tokens."""
        tokens, embs, valids = [], [], []
        for name in self._present(data, self.encoder_embeddings):
            entry = data[name]
            layout = {"row_index": entry["row_index"]} if "row_index" in entry else {}  # seq_emb from the masking
            x, emb = self.encoder_embeddings[name](entry["tensor"], entry["is_input"], **layout)
            tokens.append(x)
            embs.append(emb)
            valids.append(_check_selection(name, "is_input", entry["is_input"], x.shape[:2]))
        valid = torch.cat(valids, dim=1)
        order = valid_first_order(valid, self.num_encoder_tokens)
        valid = gather_rows(valid, order)
        keep = valid[..., None]
        x = gather_rows(torch.cat(tokens, dim=1), order) * keep
        emb = gather_rows(torch.cat(embs, dim=1), order) * keep
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat([registers, x], dim=1)
            emb = torch.cat([torch.zeros_like(registers), emb], dim=1)
            valid = torch.cat([valid.new_ones(registers.shape[:2]), valid], dim=1)
        return EncoderTokens(x, emb, valid)

    def encode(self, inputs: EncoderTokens) -> Tensor:
        """``[B, N, D]`` encoder output (after its final norm); padding is never attended."""
        return self.encoder(inputs.tokens + inputs.emb, mask=padding_mask(inputs.valid))

    def decoder_context(self, encoded: Tensor, inputs: EncoderTokens) -> Tensor:
        """What the decoder cross-attends: ``context_proj(encoded)`` plus the inputs' position+modality embeddings."""
        return self.context_proj(encoded) + inputs.emb

    def embed_targets(self, data: Mapping) -> DecoderQueries:
        """Queries for every target modality in ``data``: the mask token (images) or the shifted previous token
        (sequences), plus position+modality embeddings; targets first, cut at ``num_decoder_tokens``, padded."""
        names = self._present(data, self.decoder_embeddings)
        tokens, embs, valids, targets, indices, causals = [], [], [], [], [], []
        for index, name in enumerate(names):
            entry = data[name]
            row = (entry["tensor"].shape[0], entry["tensor"][0].numel())
            is_target = _check_selection(name, "is_target", entry["is_target"], row)
            x, emb, valid, target_ids = self.decoder_embeddings[name](entry["tensor"], is_target)
            if x is None:
                x = self.mask_token.expand_as(emb)
            tokens.append(x)
            embs.append(emb)
            valids.append(valid)
            targets.append(target_ids)
            indices.append(torch.full_like(target_ids, index))
            causals.append(torch.full_like(valid, self.modalities[name].is_sequence))
        valid = torch.cat(valids, dim=1)
        order = valid_first_order(valid, self.num_decoder_tokens)
        valid = gather_rows(valid, order)
        keep = valid[..., None]
        return DecoderQueries(
            tokens=gather_rows(torch.cat(tokens, dim=1), order) * keep,
            emb=gather_rows(torch.cat(embs, dim=1), order) * keep,
            valid=valid,
            target_ids=gather_rows(torch.cat(targets, dim=1), order) * valid,
            modality_index=gather_rows(torch.cat(indices, dim=1), order).masked_fill(~valid, -1),
            causal=gather_rows(torch.cat(causals, dim=1), order) & valid,
            modalities=tuple(names),
        )

    def decode(self, queries: DecoderQueries, context: Tensor, context_valid: Tensor) -> Tensor:
        """``[B, M, D]`` decoder output (after its final norm)."""
        self_mask, _ = resolve_mask(DecoderSelfAttentionRule(queries), self.attention, is_causal=False)
        return self.decoder(
            queries.tokens + queries.emb, context, self_mask=self_mask, cross_mask=padding_mask(context_valid)
        )

    def predict(self, hidden: Tensor, queries: DecoderQueries) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per target modality: ``[n_m, V_m]`` logits of its valid queries (all samples, row-major) and their
        ``[n_m]`` target ids. A modality with no target in the batch gets ``n_m = 0``."""
        rows = self._target_rows(hidden, queries)
        logits = {name: self.decoder_embeddings[name].to_logits(states) for name, (states, _) in rows.items()}
        return logits, {name: targets for name, (_, targets) in rows.items()}

    def loss_sums(
        self, hidden: Tensor, queries: DecoderQueries, chunk_size: int
    ) -> tuple[dict[str, TokenLossSums], dict[str, Tensor]]:
        """Per target modality: the loss sums of the logits :meth:`predict` would make, computed ``chunk_size``
        rows at a time without them (``chunked_token_loss`` on the head's weight), and the ``[n_m]`` target ids.
        The decoder output is already normed (its final norm), so the heads are the bare Linears."""
        sums, targets = {}, {}
        for name, (states, target_ids) in self._target_rows(hidden, queries).items():
            head = self.decoder_embeddings[name].to_logits
            sums[name] = chunked_token_loss(
                states, head.weight, head.bias, target_ids, chunk_size, z_loss_weight=self.loss_z_loss_weight
            )
            targets[name] = target_ids
        return sums, targets

    def _target_rows(self, hidden: Tensor, queries: DecoderQueries) -> dict[str, tuple[Tensor, Tensor]]:
        """``{modality: ([n_m, D] decoder output rows, [n_m] target ids)}`` of its valid queries, row-major."""
        rows = {}
        for index, name in enumerate(queries.modalities):
            selected = queries.modality_index == index
            rows[name] = hidden[selected], queries.target_ids[selected]
        return rows

    @cached_property
    def matmuls(self) -> FourMMatmuls:
        """The weights multiplied per token in each part of the model (for :meth:`train_flops`)."""
        return FourMMatmuls.of(self)

    def train_flops(self, batch: DataDict) -> float:
        """Forward + backward FLOPs of a training step on ``batch`` (see :mod:`polymodal.families.fourm.model.flops`).

        ``batch`` is the data_dict after :meth:`forward` (the trainer calls this after the step's forward): the
        row counts of the target ids it wrote are the heads' row counts, known without a device sync. The
        sequence lengths follow from the masks' shapes and the budgets, as in the forward pass.
        """
        targets_key = self.write_keys[1]
        if targets_key not in batch:
            raise ValueError(f"train_flops needs the batch after the forward pass (its {targets_key!r} entry)")
        encoded = self._present(batch, self.encoder_embeddings)
        decoded = self._present(batch, self.decoder_embeddings)
        encoder_positions = sum(batch[name]["is_input"].shape[1] for name in encoded)
        decoder_positions = sum(  # a sequence's queries are its row shifted by one
            batch[name]["is_target"].shape[1] - (1 if self.modalities[name].is_sequence else 0) for name in decoded
        )
        registers = 0 if self.register_tokens is None else self.register_tokens.shape[1]
        return fourm_train_flops(
            self.matmuls,
            batch_size=batch[encoded[0]]["is_input"].shape[0],
            encoder_tokens=_cut(encoder_positions, self.num_encoder_tokens) + registers,
            decoder_tokens=_cut(decoder_positions, self.num_decoder_tokens),
            head_rows={name: rows.shape[0] for name, rows in batch[targets_key].items()},
            projected_positions={
                name: batch[name]["is_input"].shape[1] for name in encoded if name in self.matmuls.input_projections
            },
        )

    def forward(self, data: DataDict) -> DataDict:
        inputs = self.embed_inputs(data)
        context = self.decoder_context(self.encode(inputs), inputs)
        queries = self.embed_targets(data)
        hidden = self.decode(queries, context, inputs.valid)
        logits_key, targets_key, loss_key = self.write_keys
        if self.loss_chunk_size is None:
            data[logits_key], data[targets_key] = self.predict(hidden, queries)
        else:
            data[loss_key], data[targets_key] = self.loss_sums(hidden, queries, self.loss_chunk_size)
        return data


def _linear_rates(last: float, depth: int) -> list[float]:
    """Stochastic depth per block, from 0 to ``last`` (plain floats: also under a meta-device build)."""
    return [last * index / (depth - 1) if depth > 1 else 0.0 for index in range(depth)]


def _cut(positions: int, budget: int | None) -> int:
    """The sequence length selection leaves: every position, cut at the budget."""
    return positions if budget is None else min(positions, budget)


def _check_selection(name: str, key: str, selection: Tensor, shape: tuple[int, ...]) -> Tensor:
    if selection.dtype != torch.bool or tuple(selection.shape) != tuple(shape):
        raise ValueError(
            f"modality {name!r}: {key} must be a bool tensor of shape {tuple(shape)}, "
            f"got {selection.dtype} {tuple(selection.shape)}"
        )
    return selection
