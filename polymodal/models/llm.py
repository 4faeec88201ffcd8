"""A Llama-style decoder-only language model as a MetaModel.

preprocessor: token embedding + causal document mask (packed sequences never attend across documents)
trunk:        pre-norm transformer with RMSNorm, SwiGLU, RoPE (positions restart per document) and GQA
head:         linear projection to the vocabulary, optionally tied to the embedding; given targets, it computes the
              next-token loss itself, a chunk of labelled positions at a time (``VocabularyHead``)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from polymodal.models.decoding import IncrementalDecoder
from polymodal.models.flops import matmul_params, transformer_train_flops_per_token
from polymodal.models.layers.attention import QKNorm
from polymodal.models.layers.block import build_transformer
from polymodal.models.layers.init import init_weights
from polymodal.models.layers.mask_rules import AttentionImpl
from polymodal.models.meta import DataDict, MetaModel, ReadWriteBlock
from polymodal.models.parts import DocumentCausalMask, TransformerTrunk, VocabularyHead
from polymodal.models.protocol import DecoderLayout, ParallelPlan
from polymodal.models.sampling import sample_tokens


class TokenEmbedding(ReadWriteBlock):
    def __init__(self, vocab_size: int, dim: int, read_key: str = "input_ids", write_key: str = "hidden"):
        super().__init__(read_key, write_key)
        self.embedding = nn.Embedding(vocab_size, dim)

    def forward(self, data: DataDict) -> DataDict:
        data[self.write_keys[0]] = self.embedding(data[self.read_keys[0]])
        return data


class CausalLM(MetaModel):
    """The MetaModel plus what the trainer asks of a model (``models/protocol.py``): initialisation, analytic
    training FLOPs and its parallel plan."""

    def __init__(
        self,
        embed: TokenEmbedding,
        mask: DocumentCausalMask,
        trunk: TransformerTrunk,
        head: VocabularyHead,
        init_std: float = 0.02,
    ):
        super().__init__(preprocessor=[embed, mask], trunk=trunk, head=head)
        self.init_std = init_std
        self._flops_per_token: dict[int, float] = {}  # by sequence length; the architecture never changes

    def initialize_weights(self) -> None:
        """Trunc-normal init with GPT-2 depth scaling of the residual projections (also after meta-device builds)."""
        init_weights(self, scheme="trunc_normal", std=self.init_std, depth=self.trunk.depth)

    def train_flops(self, batch: DataDict) -> float:
        """Forward + backward FLOPs for ``batch`` (6·N_matmul + 12·L·d·T per token, see ``models.flops``)."""
        tokens = batch[self.preprocessor.blocks[0].read_keys[0]]
        seq_len = tokens.shape[-1]
        if seq_len not in self._flops_per_token:
            trunk: TransformerTrunk = self.trunk
            dim = trunk.transformer.blocks[0].attn.q_proj.in_features
            self._flops_per_token[seq_len] = transformer_train_flops_per_token(
                matmul_params(self), trunk.depth, dim, seq_len
            )
        return self._flops_per_token[seq_len] * tokens.numel()

    @property
    def max_seq_len(self) -> int:
        """The longest window the model's RoPE covers."""
        return self.trunk.transformer.blocks[0].attn.rope.max_seq_len

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | float = 0,
        top_p: float = 0.0,
        generator: torch.Generator | None = None,
        stop_id: int | None = None,
    ) -> Tensor:
        """Continue each row of ``input_ids`` (``[B, T]``, one document per row) by ``max_new_tokens`` sampled
        tokens; returns ``[B, T + max_new_tokens]``. Sampling as :func:`polymodal.models.sampling.sample_tokens`
        (temperature 0: greedy). A row that has produced ``stop_id`` repeats it to the end.

        Each new token is computed once, with a key/value cache (:class:`~polymodal.models.decoding.IncrementalDecoder`)
        while the rows fit in ``max_seq_len``; past that, each step runs the last ``max_seq_len`` tokens again (the
        window slides, so every position moves and nothing cached stays valid)."""
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, tokens] with at least one token, got {tuple(input_ids.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        generator = generator or torch.Generator(device=input_ids.device).manual_seed(0)
        tokens = input_ids
        stopped = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        decoder = IncrementalDecoder(self)
        room = max(0, min(max_new_tokens, self.max_seq_len - input_ids.shape[1]))
        for step in range(max_new_tokens):
            if tokens.shape[1] > self.max_seq_len:
                logits = self._window_logits(tokens[:, -self.max_seq_len :])
            elif step == 0:
                logits = decoder.prefill(list(tokens), room)
            else:
                logits = decoder.extend(tokens[:, -1:])
            next_token, _ = sample_tokens(logits, temperature, generator, top_k, top_p)
            if stop_id is not None:
                next_token = torch.where(stopped, stop_id, next_token)
                stopped |= next_token == stop_id
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        return tokens

    def _window_logits(self, window: Tensor) -> Tensor:
        """The next-token logits after ``window`` (``[B, T]``, one document per row), computed from scratch."""
        positions = torch.arange(window.shape[1], device=window.device).expand_as(window)
        batch = {"input_ids": window, "document_ids": torch.zeros_like(window), "position_ids": positions}
        return self(batch)["logits"][:, -1]

    def parallel_plan(self) -> ParallelPlan:
        layout = DecoderLayout(
            blocks="trunk.transformer.blocks",
            embedding="preprocessor.blocks.0.embedding",
            final_norm="trunk.transformer.final_norm",
            head="head.proj",
        )
        return ParallelPlan(layout, sequence_keys=("input_ids", "target_ids", "position_ids"))


def build_llm(
    vocab_size: int,
    dim: int,
    depth: int,
    num_heads: int,
    num_kv_heads: int | None = None,
    max_seq_len: int = 2048,
    mlp_ratio: float = 4.0,
    multiple_of: int = 256,
    rope_theta: float = 10000.0,
    qk_norm: QKNorm = False,
    tie_embeddings: bool = False,
    init_std: float = 0.02,
    ffn_dim: int | None = None,
    norm_eps: float = 1e-6,
    residual_dropout: float = 0.0,
    res_post_norm: bool = False,
    loss_chunk_size: int | None = 1024,
    loss_z_loss_weight: float | None = None,
    attention: AttentionImpl = "sdpa",
    moe: dict[str, Any] | None = None,
) -> CausalLM:
    """Build and initialise the model (trunc-normal init with GPT-2 depth scaling of residual projections).

    The SwiGLU width is ``ffn_dim``, else :func:`~polymodal.models.layers.mlp.swiglu_hidden_dim` of ``mlp_ratio``
    and ``multiple_of``; ``qk_norm``, ``norm_eps``, ``residual_dropout`` and ``res_post_norm`` are as in
    :func:`~polymodal.models.layers.block.build_transformer`. Given ``target_ids`` the head writes the next-token
    loss sums, ``loss_chunk_size`` labelled positions at a time, instead of logits (``None``: always logits; see
    :class:`~polymodal.models.parts.VocabularyHead`), and with ``loss_z_loss_weight`` (the objective's) also their
    gradients, in the forward pass. ``attention="flex"`` runs rows of several documents through
    FlexAttention block masks (``docs/attention.md``); rows of one document take SDPA's ``is_causal`` either way.
    ``moe`` makes every feed-forward a mixture of SwiGLU experts (``docs/moe.md``); the trunk then also writes
    ``moe_stats``."""
    transformer = build_transformer(
        dim,
        depth,
        num_heads,
        num_kv_heads,
        mlp="swiglu",
        mlp_ratio=mlp_ratio,
        multiple_of=multiple_of,
        ffn_dim=ffn_dim,
        norm="rmsnorm",
        norm_eps=norm_eps,
        qk_norm=qk_norm,
        rope="1d",
        max_seq_len=max_seq_len,
        rope_theta=rope_theta,
        residual_dropout=residual_dropout,
        res_post_norm=res_post_norm,
        moe=moe,
    )
    model = CausalLM(
        TokenEmbedding(vocab_size, dim),
        DocumentCausalMask(),
        TransformerTrunk(transformer, attention=attention),
        VocabularyHead(dim, vocab_size, loss_chunk_size=loss_chunk_size, loss_z_loss_weight=loss_z_loss_weight),
        init_std=init_std,
    )
    model.initialize_weights()
    if tie_embeddings:
        model.head.proj.weight = model.preprocessor.blocks[0].embedding.weight
    return model
