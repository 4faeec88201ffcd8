"""Training FLOPs of a :class:`~polymodal.families.fourm.model.FourM` step for MFU, by the conventions of
:mod:`polymodal.models.flops`.

Per sample, with ``N`` encoder positions (selected inputs, cut at the budget, plus registers) and ``M`` decoder
positions (selected targets, cut at the budget), training costs 6 FLOPs per weight per token it multiplies:

* encoder: its block weights over ``N`` tokens, plus self-attention ``12·L_enc·D·N`` per token;
* context: ``context_proj`` and every decoder cross-attention ``k_proj``/``v_proj`` over ``N`` tokens;
* decoder: the other block weights (self-attention, cross-attention ``q_proj``/``o_proj``, MLP) over ``M`` tokens,
  self-attention ``12·L_dec·D·M`` and cross-attention ``12·L_dec·D·N`` per decoder token;
* input projections: a pixel / vector modality's ``proj`` runs on *every* position of its row, before selection;
* heads: each modality's ``to_logits`` (``D x V_m``) runs on its valid target rows only.

Padding positions inside ``N`` and ``M`` are counted: the model computes them. Embedding lookups cost no FLOPs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from polymodal.models.flops import matmul_params, transformer_train_flops_per_token
from polymodal.models.layers.cross_attention import CrossAttention

if TYPE_CHECKING:
    from polymodal.families.fourm.model.fourm import FourM


@dataclass(frozen=True)
class FourMMatmuls:
    """The weights a FourM multiplies per token, by where the token is (counted once from its Linears).

    Attributes:
        dim, encoder_depth, decoder_depth: trunk sizes (attention width = ``dim``).
        encoder: encoder block weights, per encoder token.
        context: ``context_proj`` + every cross-attention ``k_proj``/``v_proj``, per encoder token.
        decoder: the remaining decoder block weights, per decoder token.
        input_projections: ``{modality: proj weights}`` of pixel / vector encoder embeddings, per row position.
        vocab_sizes: ``{modality: V}`` of every decoder head (``D x V`` weights per valid target row).
    """

    dim: int
    encoder_depth: int
    decoder_depth: int
    encoder: int
    context: int
    decoder: int
    input_projections: Mapping[str, int]
    vocab_sizes: Mapping[str, int]

    @classmethod
    def of(cls, model: FourM) -> FourMMatmuls:
        cross_kv = [
            linear for module in model.decoder.modules() if isinstance(module, CrossAttention)
            for linear in (module.k_proj, module.v_proj)
        ]  # fmt: skip
        context_only = nn.ModuleList([model.context_proj, *cross_kv])
        decoder_total = matmul_params(model.decoder)
        return cls(
            dim=model.dim,
            encoder_depth=len(model.encoder.blocks),
            decoder_depth=len(model.decoder.blocks),
            encoder=matmul_params(model.encoder),
            context=matmul_params(context_only),
            decoder=decoder_total - matmul_params(nn.ModuleList(cross_kv)),
            input_projections={
                name: matmul_params(embedding)
                for name, embedding in model.encoder_embeddings.items()
                if matmul_params(embedding)
            },
            vocab_sizes={
                name: embedding.to_logits.out_features for name, embedding in model.decoder_embeddings.items()
            },
        )


def fourm_train_flops(
    matmuls: FourMMatmuls,
    batch_size: int,
    encoder_tokens: int,
    decoder_tokens: int,
    head_rows: Mapping[str, int],
    projected_positions: Mapping[str, int] | None = None,
) -> float:
    """Forward + backward FLOPs of one FourM step.

    Args:
        matmuls: the model's per-token weights (:meth:`FourMMatmuls.of`).
        batch_size: samples in the step.
        encoder_tokens, decoder_tokens: ``N`` and ``M``, the per-sample sequence lengths the trunk runs on.
        head_rows: ``{modality: target rows}`` summed over the batch (each row costs ``D x V_m`` weights).
        projected_positions: ``{modality: positions per sample}`` of the pixel / vector modalities embedded
            through ``proj`` (all positions of their row, before selection).
    """
    for name, value in (
        ("batch_size", batch_size),
        ("encoder_tokens", encoder_tokens),
        ("decoder_tokens", decoder_tokens),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for label, given, known in (
        ("head_rows", head_rows, matmuls.vocab_sizes),
        ("projected_positions", projected_positions or {}, matmuls.input_projections),
    ):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"{label} names {unknown}, which are not among the model's {sorted(known)}")
    n, m, dim = encoder_tokens, decoder_tokens, matmuls.dim
    per_sample = (
        n * transformer_train_flops_per_token(matmuls.encoder, matmuls.encoder_depth, dim, n)
        + 6.0 * matmuls.context * n
        + m * transformer_train_flops_per_token(matmuls.decoder, matmuls.decoder_depth, dim, m)
        + 12.0 * matmuls.decoder_depth * dim * m * n
        + sum(6.0 * matmuls.input_projections[name] * count for name, count in (projected_positions or {}).items())
    )
    heads = sum(6.0 * dim * matmuls.vocab_sizes[name] * rows for name, rows in head_rows.items())
    return batch_size * per_sample + heads
