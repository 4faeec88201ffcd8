"""Per-GPU memory: the tensors saved for backward and the memory lines of a step.

``block_saved_tensors`` lists, in bytes on one GPU, every tensor one transformer block saves for backward
(``tests/train/test_planner.py`` checks the list against autograd's saved-tensor hooks), ``outside_saved_tensors``
those of the embedding, final norm, LM head and loss; ``block_input_bytes`` is what activation checkpointing keeps
of a block and ``batch_bytes`` the batch and attention mask. ``memory_lines`` adds the training state
(``states.state_lines``), FSDP's unsharded gradients or autocast's weight copies, activations and logits into the
lines of the report, each with and without activation checkpointing.

The head either computes the loss itself, a chunk of labelled positions at a time (a ``VocabularyHead`` with a
``loss_chunk_size``, except under tensor parallelism: ``head_loss_chunk``), or writes logits for every position.
The formulas count every position as labelled: an upper bound for batches with ignored targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from polymodal.train.parallel.planner.shapes import FP32, INT64, BlockShape, ModelShape, TokenLayout
from polymodal.train.parallel.planner.states import MemoryLine, local_numel, same, state_lines, unit_numels


@dataclass(frozen=True)
class SavedTensor:
    name: str
    bytes: int


# ---------------------------------------------------------------------------------------------------- activations


def _rms_norm_saved(prefix: str, width: int, rows: int, layout: TokenLayout) -> list[SavedTensor]:
    """``F.rms_norm`` on an fp32 copy of its input saves that input, 1/rms and the normalised input (all fp32);
    with non-fp32 parameters also the fp32 copy of the weight. Its output is saved by whatever consumes it."""
    saved = [
        SavedTensor(f"{prefix}: input in fp32", FP32 * width * rows),
        SavedTensor(f"{prefix}: 1/rms (fp32)", FP32 * rows),
        SavedTensor(f"{prefix}: normalised input (fp32)", FP32 * width * rows),
    ]
    if layout.precision.param != FP32:
        saved.append(SavedTensor(f"{prefix}: fp32 copy of the weight", FP32 * width))
    return saved


def _norm_output(prefix: str, width: int, consumers: int, layout: TokenLayout) -> SavedTensor:
    """The norm output as its linears save it: gathered over the sequence under TP, and under autocast with
    fp32 parameters cast to bf16 separately by each of the ``consumers`` linears."""
    copies = consumers if layout.precision.autocast_casts else 1
    return SavedTensor(f"{prefix}: output (linear input)", layout.precision.compute * width * layout.tokens * copies)


def block_saved_tensors(block: BlockShape, layout: TokenLayout) -> list[SavedTensor]:
    """The tensors one transformer block saves for backward, in bytes on one GPU.

    Pre-norm RMSNorm, q/k/v/o projections with RoPE (cos/sin gathered by position ids) and GQA, SDPA with the
    document mask turned into an additive bias (flash / memory-efficient kernels: no ``T×T`` probabilities, but
    the bias is ``B×Tq×Tk``; none for one-document rows, whose causal mask is no tensor), SwiGLU.
    Sequence-parallel regions hold ``1/tp`` of the tokens, head-sharded and MLP-hidden tensors ``1/tp`` of the
    width; context parallelism splits the queries, and keys/values are gathered over the whole sequence.
    """
    tp, e = layout.dims.tp, layout.precision.compute
    tokens, sp_tokens = layout.tokens, layout.sequence_parallel_tokens
    all_tokens = layout.batch_size * layout.seq_len  # keys/values of the whole sequence (gathered under CP)
    q_width = block.num_heads * block.head_dim // tp
    kv_width = block.num_kv_heads * block.head_dim // tp
    hidden = block.mlp_hidden // tp

    saved = _rms_norm_saved("attention norm", block.dim, sp_tokens, layout)
    saved.append(_norm_output("attention norm", block.dim, consumers=3, layout=layout))
    if block.qk_norm:
        saved += _rms_norm_saved("query norm", block.head_dim, tokens * block.num_heads // tp, layout)
        saved += _rms_norm_saved("key norm", block.head_dim, tokens * block.num_kv_heads // tp, layout)
    saved += [
        SavedTensor("RoPE cos and sin (fp32)", 2 * FP32 * block.head_dim * tokens),
        SavedTensor("rotated queries", e * q_width * tokens),
        SavedTensor("rotated keys", e * kv_width * all_tokens),
        SavedTensor("values", e * kv_width * all_tokens),
    ]
    if layout.mask == "document":
        bias = e * layout.batch_size * (layout.seq_len // layout.dims.cp) * layout.seq_len
        saved.append(SavedTensor("attention mask as additive bias", bias))
    saved += [
        SavedTensor("attention output (o_proj input)", e * q_width * tokens),
        SavedTensor("attention log-sum-exp (fp32)", FP32 * (block.num_heads // tp) * tokens),
    ]
    saved += _rms_norm_saved("MLP norm", block.dim, sp_tokens, layout)
    saved.append(_norm_output("MLP norm", block.dim, consumers=2, layout=layout))
    saved += [
        SavedTensor(f"SwiGLU {name}", e * hidden * tokens)
        for name in ("fc1 output (SiLU input)", "fc3 output", "SiLU output", "gated product (fc2 input)")
    ]
    return saved


def head_loss_chunk(model: ModelShape, layout: TokenLayout) -> int | None:
    """Positions per chunk of the head's own loss on this layout; None when the head writes logits, as it always
    does under tensor parallelism (``train.parallel.plans.head_writes_logits``)."""
    return model.loss_chunk_size if layout.dims.tp == 1 else None


def outside_saved_tensors(model: ModelShape, layout: TokenLayout) -> list[SavedTensor]:
    """Tensors saved for backward outside the blocks: embedding input, final norm, LM head and loss. The head's
    chunked loss saves its input rows, their targets and log Z (nothing per vocabulary entry); a head writing
    logits saves its input, and the loss the fp32 logits and log-softmax (next-token cross-entropy and z-loss)."""
    tokens = layout.tokens
    saved = [SavedTensor("token ids (embedding input)", INT64 * tokens)]
    saved += _rms_norm_saved("final norm", model.block.dim, layout.sequence_parallel_tokens, layout)
    if head_loss_chunk(model, layout) is not None:
        rows = layout.precision.param * model.block.dim * tokens
        return saved + [
            SavedTensor("final norm output, labelled rows (head input)", rows),
            SavedTensor("labelled-position indices (row selection, int64)", INT64 * tokens),
            SavedTensor("target ids of labelled positions", INT64 * tokens),
            SavedTensor("log-sum-exp per labelled position (fp32)", FP32 * tokens),
        ]
    vocab = model.vocab_size // layout.dims.tp if layout.loss_parallel else model.vocab_size
    saved += [
        _norm_output("final norm", model.block.dim, consumers=1, layout=layout),
        SavedTensor("logits in fp32", FP32 * vocab * tokens),
        SavedTensor("log-softmax (fp32)", FP32 * vocab * tokens),
        SavedTensor("log-sum-exp (fp32, z-loss)", FP32 * tokens),
        SavedTensor("target ids", INT64 * tokens),
        SavedTensor("valid-target mask", tokens),
    ]
    return saved


def block_input_bytes(model: ModelShape, layout: TokenLayout) -> int:
    """What activation checkpointing keeps of one block: its input (residual stream, sequence-parallel)."""
    return layout.precision.param * model.block.dim * layout.sequence_parallel_tokens


def batch_bytes(layout: TokenLayout) -> int:
    """Document ids (whole sequence: the mask is built from all of them), this rank's position ids and the
    boolean ``B×T×T`` document mask (none for one-document rows), alive for the whole micro-step."""
    full = layout.batch_size * layout.seq_len
    mask = layout.batch_size * layout.seq_len**2 if layout.mask == "document" else 0
    return INT64 * full + INT64 * layout.tokens + mask


# ---------------------------------------------------------------------------------------------------- memory


def memory_lines(
    model: ModelShape, layout: TokenLayout, block_saved: Sequence[SavedTensor], outside_saved: Sequence[SavedTensor]
) -> list[MemoryLine]:
    precision = layout.precision
    lines = state_lines(model.params, layout, unit="block")
    if layout.wrapper in ("fsdp", "hsdp"):
        _, (block_local, *_) = unit_numels(model.params, layout)
        block_grads = (precision.param + precision.reduce) * block_local
        lines.append(same("unsharded gradients of one block", block_grads, "before reduce-scatter / accumulation"))
    elif precision.autocast_casts:  # the head's own loss computes in fp32: no bf16 copy of its weight
        chunk = head_loss_chunk(model, layout)
        cast = [p for p in model.params if p.matmul and (chunk is None or p.name != model.head_weight)]
        matmul = local_numel(cast, layout)
        lines.append(same("bf16 weight copies (autocast)", 2 * matmul, "held for backward"))

    per_layer = sum(t.bytes for t in block_saved)
    lines += [
        MemoryLine(
            "activations: transformer blocks",
            model.depth * per_layer,
            model.depth * block_input_bytes(model, layout) + per_layer,
            "AC: block inputs + one recomputed block",
        ),
        same("activations: embedding, head, loss", sum(t.bytes for t in outside_saved)),
        same("batch and attention mask", batch_bytes(layout)),
        _logits_line(model, layout),
    ]
    return lines


def _logits_line(model: ModelShape, layout: TokenLayout) -> MemoryLine:
    """An estimate of the logits alive at once beyond what is saved, at the start of backward."""
    precision, chunk = layout.precision, head_loss_chunk(model, layout)
    if chunk is not None:  # one chunk's fp32 logits, turned into their gradient in place
        weight = model.vocab_size * model.block.dim
        fp32_weight = 2 * FP32 * weight if precision.param != FP32 else 0
        size = FP32 * min(chunk, layout.tokens) * model.vocab_size + fp32_weight
        note = "estimate, one chunk" + (" + fp32 head weight and its gradient" if fp32_weight else "")
        if model.loss_grads_in_forward:  # the weight's and the rows' gradients, held from forward to backward
            size += FP32 * (weight + layout.tokens * model.block.dim)
            note += " + the loss gradients made in forward"
        return same("logits of one loss chunk", size, note)
    vocab = model.vocab_size // layout.dims.tp if layout.loss_parallel else model.vocab_size
    # Two fp32 logit-sized gradients inside the loss backward; in bf16 also the head's own logits (kept by the output
    # dict) and the gradient cast back to bf16.
    per_logit = 2 * FP32 + (2 * precision.compute if precision.compute != FP32 else 0)
    return same("logits and logit gradients", per_logit * vocab * layout.tokens, "estimate, start of backward")
