"""One training step (forward, backward, AdamW) of our models against a reference implementation of the same model.

* ``llm``: our Llama-style decoder, built as ``configs/llm/model.yaml`` builds it (``build_llm``, the head's chunked
  loss of 1024 positions, ``NextTokenLoss`` with its z-loss of 1e-4), against ``transformers``' ``LlamaForCausalLM``
  (SDPA attention, random init from a ``LlamaConfig``: nothing is downloaded) with the same hyper-parameters (width,
  depth, heads, SwiGLU width, RMSNorm epsilon, RoPE theta, untied head), so both have the same parameter count
  (printed). Each row is one document: ``document_ids`` all zero for ours, labels unshifted for theirs
  (``shift_labels``: both predict the same T targets per row).
* ``fourm``: our 4M (``build_fourm``, 4M-7's token modalities, batches masked by ``FourMMasking``, ``FourMLoss``)
  against :class:`PlainFourM`, a plain PyTorch re-statement of the same step: embeddings of the selected tokens,
  an encoder over the visible tokens, a decoder cross-attending to its output, per-modality heads and
  cross-entropy, with the same widths, depths, heads, MLP and token counts. The plain side gets the token layout
  (which positions are valid, each query's modality) precomputed from the same masked batch, so it measures the
  model's arithmetic; ours also pays the selection (gathering the selected tokens, building the masks) and the
  chunked head loss.

Both sides step a fused ``torch.optim.AdamW``: ours as the trainer builds it (``build_optimizer``, fused wherever
torch has the kernels, the CPU included), theirs as the ``transformers`` Trainer's default (``adamw_torch_fused``
on torch >= 2.8). After ``--warmup`` untimed steps each, they alternate ours/theirs for ``--rounds`` rounds
(``timing.compare``). ``--compile``: ours compiles each transformer block (as ``experiment.torch_compile`` does),
theirs is ``torch.compile``-d whole.

``--profile`` then profiles ``--profile-steps`` steps of each side and splits their time by kernel: matrix
multiplications, the attention kernels, and everything else (norms, activations, RoPE, the optimizer, copies).
Both sides run the same matmuls and attention, so their time is a floor no implementation of the same
arithmetic goes under: ``floor`` is that share of the reference's step, the best ratio an implementation with
nothing else would reach.

    python benchmarks/reference_step.py --threads 1                   # both cases, eager
    python benchmarks/reference_step.py --model llm --profile --threads 1
    python benchmarks/reference_step.py --model llm --compile --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from masking import build_masking, build_registry, synthetic_batch
from timing import compare, measuring, parse_with_threads
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from polymodal.config.schema import ExperimentConfig
from polymodal.families.fourm.loss import FourMLoss
from polymodal.families.fourm.model import SIZES, build_fourm
from polymodal.families.fourm.model.fourm import FourM
from polymodal.models.llm import build_llm
from polymodal.objectives.lm import NextTokenLoss
from polymodal.train.optim import build_optimizer
from polymodal.train.parallel.parallelize import parallelize

LR = 1e-4
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"})


@dataclass
class Timed:
    """A training step as a closure; ``seconds`` times one call."""

    step: Callable[[], Tensor]

    def seconds(self) -> float:
        start = time.perf_counter()
        self.step()
        return time.perf_counter() - start


def training_step(optimizer: torch.optim.Optimizer, loss_of: Callable[[], Tensor]) -> Timed:
    def step() -> Tensor:
        loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return Timed(step)


def our_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The trainer's AdamW (``build_optimizer``: fused where torch has the kernels)."""
    return build_optimizer(model, lr=LR)


def their_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The ``transformers`` Trainer's default AdamW on torch >= 2.8 (``adamw_torch_fused``)."""
    return torch.optim.AdamW(model.parameters(), lr=LR, fused=True)


def parameter_count(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def compiled_blocks(model: nn.Module) -> nn.Module:
    """What the trainer runs under ``experiment.torch_compile: true``: each transformer block compiled in place."""
    return parallelize(model, None, ExperimentConfig(torch_compile=True), torch.device("cpu"))[1]


def llm_sides(args: argparse.Namespace) -> tuple[Timed, Timed, str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    z_loss_weight = 1e-4  # configs/llm/model.yaml's, also given to the head (gradients in its forward pass)
    ours = build_llm(
        args.vocab, args.dim, args.depth, args.heads, args.heads, args.seq_len, multiple_of=256,
        loss_z_loss_weight=z_loss_weight,
    )  # fmt: skip
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.dim,
        intermediate_size=ours.trunk.transformer.blocks[0].mlp.fc1.out_features,
        num_hidden_layers=args.depth,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.seq_len,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    theirs = LlamaForCausalLM(config)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    batch = {
        "input_ids": inputs,
        "target_ids": targets,
        "document_ids": torch.zeros_like(inputs),
        "position_ids": torch.arange(args.seq_len).expand_as(inputs),
    }
    objective = NextTokenLoss(z_loss_weight=z_loss_weight)
    ours_run = compiled_blocks(ours) if args.compile else ours
    theirs_run = torch.compile(theirs) if args.compile else theirs
    what = (
        f"LLM d{args.dim} L{args.depth} H{args.heads} T{args.seq_len} B{args.batch} V{args.vocab}: "
        f"ours {parameter_count(ours):,} params, transformers Llama {parameter_count(theirs):,} params"
    )
    return (
        training_step(our_optimizer(ours), lambda: objective(ours_run(dict(batch)))[0]),
        training_step(
            their_optimizer(theirs), lambda: theirs_run(input_ids=inputs, labels=targets, shift_labels=targets).loss
        ),
        what,
    )


class PlainBlock(nn.Module):
    """Pre-norm self-attention (then cross-attention to ``context`` when ``cross``), then a SwiGLU MLP: 4M's
    ``swiglu_nobias`` blocks (bias-free LayerNorms and projections; the context normed in every block)."""

    def __init__(self, dim: int, heads: int, cross: bool) -> None:
        super().__init__()
        self.heads, hidden = heads, int(2 * 4 * dim / 3)
        self.norm1, self.norm3 = nn.LayerNorm(dim, bias=False), nn.LayerNorm(dim, bias=False)
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        if cross:
            self.norm2, self.context_norm = nn.LayerNorm(dim, bias=False), nn.LayerNorm(dim, bias=False)
            self.q, self.kv = nn.Linear(dim, dim, bias=False), nn.Linear(dim, 2 * dim, bias=False)
            self.cross_out = nn.Linear(dim, dim, bias=False)
        self.fc13, self.fc2 = nn.Linear(dim, 2 * hidden, bias=False), nn.Linear(hidden, dim, bias=False)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        q, k, v = (x.unflatten(-1, (self.heads, -1)).transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2).flatten(2)

    def forward(self, x: Tensor, mask: Tensor, context: Tensor | None = None, cross_mask: Tensor | None = None):
        x = x + self.out(self.attend(*self.qkv(self.norm1(x)).chunk(3, dim=-1), mask))
        if context is not None:
            keys, values = self.kv(self.context_norm(context)).chunk(2, dim=-1)
            x = x + self.cross_out(self.attend(self.q(self.norm2(x)), keys, values, cross_mask))
        gate, up = self.fc13(self.norm3(x)).chunk(2, dim=-1)
        return x + self.fc2(F.silu(gate) * up)


class PlainFourM(nn.Module):
    """4M's step on a precomputed token layout: ``[B, N]`` encoder ids and ``[B, M]`` decoder ids (the shifted
    sequence tokens, or a mask token) in one token table of ``table_size`` rows (as many as our per-modality tables
    together), their fixed position + modality embeddings, each query's modality index, and a head per target
    modality of ``vocab_sizes`` (indexed by that modality index)."""

    def __init__(
        self, dim: int, depths: tuple[int, int], heads: int, table_size: int, vocab_sizes: Sequence[int]
    ) -> None:
        super().__init__()
        self.table = nn.Embedding(table_size, dim)
        self.encoder = nn.ModuleList(PlainBlock(dim, heads, cross=False) for _ in range(depths[0]))
        self.decoder = nn.ModuleList(PlainBlock(dim, heads, cross=True) for _ in range(depths[1]))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(dim, bias=False), nn.LayerNorm(dim, bias=False)
        self.context_proj = nn.Linear(dim, dim)
        self.heads = nn.ModuleList(nn.Linear(dim, size, bias=False) for size in vocab_sizes)

    def forward(self, layout: dict[str, Tensor]) -> Tensor:
        emb, key_mask = layout["encoder_emb"], layout["encoder_valid"][:, None, None, :]
        x = self.table(layout["encoder_ids"]) + emb
        for block in self.encoder:
            x = block(x, key_mask)
        context = self.context_proj(self.encoder_norm(x)) + emb
        index, causal, valid = layout["modality_index"], layout["causal"], layout["decoder_valid"]
        positions = torch.arange(index.shape[1])
        self_mask = (index[:, :, None] == index[:, None, :]) & valid[:, None, :]
        self_mask = (self_mask & ~(causal[:, :, None] & (positions[None, :] > positions[:, None])))[:, None]
        self_mask |= ~self_mask.any(dim=-1, keepdim=True)  # padded queries attend everything (finite, unused)
        y = self.table(layout["decoder_ids"]) + layout["decoder_emb"]
        for block in self.decoder:
            y = block(y, self_mask, context, key_mask)
        y = self.decoder_norm(y)
        losses = [F.cross_entropy(head(y[index == i]).float(), layout["targets"][index == i])
                  for i, head in enumerate(self.heads) if (index == i).any()]  # fmt: skip
        return sum(losses) / len(losses)


@torch.no_grad()
def plain_layout(model: FourM, batch: dict, table_size: int) -> tuple[dict[str, Tensor], list[int]]:
    """The token layout our model selects from ``batch`` as plain tensors (random ids in a table of ``table_size``
    rows), and the vocabulary size of each query modality index."""
    inputs, queries = model.embed_inputs(batch), model.embed_targets(batch)
    vocab_sizes = [model.modalities[name].vocab_size for name in queries.modalities]
    generator, total = torch.Generator().manual_seed(0), table_size
    layout = {
        "encoder_ids": torch.randint(0, total, inputs.valid.shape, generator=generator),
        "encoder_emb": inputs.emb,
        "encoder_valid": inputs.valid,
        "decoder_ids": torch.randint(0, total, queries.valid.shape, generator=generator),
        "decoder_emb": queries.emb,
        "decoder_valid": queries.valid,
        "modality_index": queries.modality_index,
        "causal": queries.causal,
        "targets": queries.target_ids,
    }
    return layout, vocab_sizes


def fourm_sides(args: argparse.Namespace) -> tuple[Timed, Timed, str]:
    registry = build_registry(args.seq_tokens)
    masked = build_masking(registry, args.tokens)(
        synthetic_batch(registry, args.fourm_batch, seed=0), torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    sizes = {} if args.fourm_dim is None else {"dim": args.fourm_dim}
    objective = FourMLoss()
    ours = build_fourm(  # the heads' loss gradients made in their forward pass (FourM's loss_z_loss_weight)
        args.size, registry, num_encoder_tokens=args.tokens, num_decoder_tokens=args.tokens,
        loss_z_loss_weight=objective.z_loss_weight, **sizes,
    )  # fmt: skip
    table_size = sum(embedding.token_emb.num_embeddings for embedding in ours.encoder_embeddings.values())
    layout, vocab_sizes = plain_layout(ours, masked, table_size)
    size = SIZES[args.size]
    plain = PlainFourM(ours.dim, (size.encoder_depth, size.decoder_depth), size.num_heads, table_size, vocab_sizes)
    ours_run = compiled_blocks(ours) if args.compile else ours
    plain_run = torch.compile(plain) if args.compile else plain
    what = (
        f"4M {args.size} (dim {ours.dim}, {size.encoder_depth}+{size.decoder_depth} blocks): batch "
        f"{args.fourm_batch}, {args.tokens} input + {args.tokens} target tokens: ours {parameter_count(ours):,} "
        f"params, plain {parameter_count(plain):,} params (ours adds the modality embeddings and the mask token)"
    )
    return (
        training_step(our_optimizer(ours), lambda: objective(ours_run(dict(masked)))[0]),
        training_step(their_optimizer(plain), lambda: plain_run(layout)),
        what,
    )


@dataclass(frozen=True)
class TimeSplit:
    """Seconds per step in matmuls, in attention kernels and in everything else (profiler self times)."""

    matmul_s: float
    attention_s: float
    other_s: float

    @property
    def total_s(self) -> float:
        return self.matmul_s + self.attention_s + self.other_s


def time_split(side: Timed, steps: int) -> TimeSplit:
    """Profile ``steps`` steps of ``side`` and split the self time of every op into the three kinds."""
    with profile(
        activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])]
    ) as prof:
        for _ in range(steps):
            side.step()
    seconds = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        kind = "matmul" if event.key in MATMUL_OPS else "attention" if "attention" in event.key else "other"
        seconds[kind] += event.self_cpu_time_total / 1e6 / steps
    return TimeSplit(seconds["matmul"], seconds["attention"], seconds["other"])


def print_splits(labels: tuple[str, str], ours: TimeSplit, theirs: TimeSplit) -> None:
    print(f"  {'profiled, s per step':30}{'matmul':>9}{'attn':>9}{'other':>9}{'total':>9}")
    for label, split in zip(labels, (ours, theirs), strict=True):
        print(f"  {label:30}{split.matmul_s:9.3f}{split.attention_s:9.3f}{split.other_s:9.3f}{split.total_s:9.3f}")
    floor = (theirs.matmul_s + theirs.attention_s) / theirs.total_s
    print(f"  {'floor (matmul+attn of theirs)':30}{floor:9.2f}  the best ratio with nothing else", flush=True)


@dataclass
class Result:
    ours_s: list[float]
    theirs_s: list[float]
    splits: tuple[TimeSplit, TimeSplit] | None = None

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours_s) / statistics.median(self.theirs_s)


def measure(case: str, args: argparse.Namespace) -> Result:
    ours, theirs, what = (llm_sides if case == "llm" else fourm_sides)(args)
    labels = ("ours (polymodal LLM)", "transformers Llama") if case == "llm" else ("ours (polymodal 4M)", "plain 4M")
    print(f"{what}\n  {'compiled' if args.compile else 'eager'}, float32, {args.rounds} rounds", flush=True)
    for _ in range(args.warmup):
        ours.step(), theirs.step()
    timings = compare(ours.seconds, theirs.seconds, args.rounds)
    print(f"  {'step time, s':30}{'median':>9}{'best':>9}")
    for label, seconds in zip(labels, (timings.ours_s, timings.baseline_s), strict=True):
        print(f"  {label:30}{statistics.median(seconds):9.3f}{min(seconds):9.3f}")
    result = Result(timings.ours_s, timings.baseline_s)
    best = min(result.ours_s) / min(result.theirs_s)
    print(f"  {'ratio ours/theirs':30}{result.ratio:9.2f}{best:9.2f}", flush=True)
    if args.profile:
        result.splits = (time_split(ours, args.profile_steps), time_split(theirs, args.profile_steps))
        print_splits(labels, *result.splits)
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("llm", "fourm", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (compilation happens here)")
    parser.add_argument("--compile", action="store_true", help="ours per-block torch.compile, theirs whole")
    parser.add_argument("--profile", action="store_true", help="then split each side's step time by kernel kind")
    parser.add_argument("--profile-steps", type=int, default=2, help="profiled steps per side")
    llm = parser.add_argument_group("--model llm")
    llm.add_argument("--dim", type=int, default=512)
    llm.add_argument("--depth", type=int, default=8)
    llm.add_argument("--heads", type=int, default=8)
    llm.add_argument("--seq-len", type=int, default=256)
    llm.add_argument("--batch", type=int, default=8)
    llm.add_argument("--vocab", type=int, default=8192)
    fourm = parser.add_argument_group("--model fourm")
    fourm.add_argument("--size", choices=sorted(SIZES), default="tiny", help="4M size (widths, depths, heads)")
    fourm.add_argument("--fourm-dim", type=int, default=None, help="width (default: the size's)")
    fourm.add_argument("--fourm-batch", type=int, default=8)
    fourm.add_argument("--tokens", type=int, default=128, help="input and target tokens per sample")
    fourm.add_argument("--seq-tokens", type=int, default=64, help="max_tokens of caption and det")
    positive = (
        "rounds",
        "profile_steps",
        "dim",
        "depth",
        "heads",
        "seq_len",
        "batch",
        "vocab",
        "fourm_batch",
        "tokens",
        "seq_tokens",
    )
    args = parse_with_threads(parser, argv, positive)
    with measuring(args.threads):
        cases = ("llm", "fourm") if args.model == "both" else (args.model,)
        return {case: measure(case, args) for case in cases}


if __name__ == "__main__":
    main()
