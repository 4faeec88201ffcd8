"""Lumina-mGPT's model: Chameleon's decoder over the shared image–text vocabulary, as the engine's
:class:`~polymodal.models.llm.CausalLM`.

Chameleon is a Llama-2 decoder (RMSNorm, SwiGLU, RoPE) with two changes for stable mixed-modal training: QK-norm
as a LayerNorm over ``head_dim`` with a weight and bias per head, and in the 34B model the "swin norm" ordering
(each branch's output normalised before the residual add). Lumina-mGPT adds dropout on each branch output
(``residual_dropout``) and a z-loss (``NextTokenLoss(z_loss_weight=1e-5)``), and trains with image-token logits
left unmasked, as this model always leaves them. Weights in and out of Hugging Face checkpoints:
:mod:`polymodal.families.lumina.hf_chameleon`, registered below for ``init_from`` and ``export --format hf``.
"""

from __future__ import annotations

from polymodal.models.hf_directory import register_hf_format
from polymodal.models.layers.attention import QKNorm
from polymodal.models.llm import CausalLM, build_llm


def build_chameleon(
    vocab_size: int,
    dim: int,
    depth: int,
    num_heads: int,
    num_kv_heads: int | None = None,
    ffn_dim: int | None = None,
    multiple_of: int = 256,
    max_seq_len: int = 4096,
    rope_theta: float = 10000.0,
    qk_norm: QKNorm = "per_head_layernorm",
    residual_dropout: float = 0.0,
    swin_norm: bool = False,
    norm_eps: float = 1e-5,
    init_std: float = 0.02,
    loss_chunk_size: int | None = 1024,
    loss_z_loss_weight: float | None = None,
) -> CausalLM:
    """A Chameleon decoder with an untied head; its batch is the LLM's (``input_ids``, ``document_ids``,
    ``position_ids``; logits under ``logits``, or with ``target_ids`` the loss sums of the head's chunked loss, see
    :func:`~polymodal.models.llm.build_llm`).

    The SwiGLU width is ``ffn_dim``, else Llama's 8/3 · ``dim`` rounded up to ``multiple_of`` (11008 at 4096,
    22016 at 8192: Chameleon's widths). ``swin_norm`` is the res-post-norm ordering of Chameleon-34B.
    """
    return build_llm(
        vocab_size,
        dim,
        depth,
        num_heads,
        num_kv_heads,
        max_seq_len=max_seq_len,
        multiple_of=multiple_of,
        ffn_dim=ffn_dim,
        rope_theta=rope_theta,
        qk_norm=qk_norm,
        norm_eps=norm_eps,
        residual_dropout=residual_dropout,
        res_post_norm=swin_norm,
        tie_embeddings=False,
        init_std=init_std,
        loss_chunk_size=loss_chunk_size,
        loss_z_loss_weight=loss_z_loss_weight,
    )


register_hf_format(
    "chameleon",
    importer="polymodal.families.lumina.hf_chameleon:chameleon_to_polymodal",
    builder=f"{__name__}.build_chameleon",
    exporter="polymodal.families.lumina.hf_chameleon:export_chameleon",
)
