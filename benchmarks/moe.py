"""The MoE feed-forward: batched experts over a padded ``[E, C, D]`` buffer against a Python loop over the experts.

Both sides are one forward + backward of the same :class:`~polymodal.models.layers.moe.MoEFeedForward` on the same
tokens, with the same routing (``layer.route``), so they differ only in how the experts are applied:

* (A) batched: ``layer(x)``, tokens scattered into capacity slots and the experts run as ``torch.bmm`` calls;
* (B) loop: for each expert, gather its tokens, run ``GroupedExperts.expert_forward`` on them and add the weighted
  result back (the way a per-expert ``nn.ModuleList`` MoE computes).

The script prints the largest difference of the two outputs and input gradients, then the median and best seconds per
step of each (alternating A/B, B/A, ... for ``--rounds`` rounds after a warm-up step each) and their ratios.

    python benchmarks/moe.py                          # 8 x 512 tokens, dim 512, 8 experts, top-2, dropless
    python benchmarks/moe.py --experts 32 --top-k 1 --capacity-factor 1.25 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timing import compare, measuring, parse_with_threads
from torch import Tensor

from polymodal.models.layers.moe import MoEFeedForward


def looped_forward(layer: MoEFeedForward, x: Tensor) -> Tensor:
    """The layer's output computed one expert at a time (the baseline)."""
    tokens = x.reshape(-1, x.shape[-1])
    routing = layer.route(F.linear(tokens.float(), layer.router.weight.float()))
    source = torch.arange(routing.expert.numel()) // layer.top_k
    out = torch.zeros_like(tokens)
    for expert in range(layer.num_experts):
        slots = ((routing.expert == expert) & routing.kept).nonzero().squeeze(-1)
        if slots.numel():
            result = layer.experts.expert_forward(tokens[source[slots]], expert) * routing.weight[slots, None]
            out = out.index_add(0, source[slots], result)
    return out.view(x.shape)


def timed_step(forward: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], float]:
    def step() -> float:
        start = time.perf_counter()
        forward(x).square().mean().backward()
        return time.perf_counter() - start

    return step


def outputs(forward: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_()
    out = forward(x)
    out.square().mean().backward()
    return out.detach(), x.grad


def main(argv: Sequence[str] | None = None) -> tuple[list[float], list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=None, help="default: dropless")
    parser.add_argument("--rounds", type=int, default=5)
    args = parse_with_threads(parser, argv, ("batch", "seq_len", "dim", "hidden", "experts", "top_k", "rounds"))
    with measuring(args.threads):
        torch.manual_seed(0)
        layer = MoEFeedForward(args.dim, args.hidden, args.experts, args.top_k, args.capacity_factor, kind="swiglu")
        x = torch.randn(args.batch, args.seq_len, args.dim)
        print(
            f"MoE swiglu: {args.batch} x {args.seq_len} tokens, dim {args.dim}, hidden {args.hidden}, "
            f"{args.experts} experts, top-{args.top_k}, capacity factor {args.capacity_factor or 'none (dropless)'}"
        )

        def batched(tokens: Tensor) -> Tensor:
            return layer(tokens)[0]

        def looped(tokens: Tensor) -> Tensor:
            return looped_forward(layer, tokens)

        (out_a, grad_a), (out_b, grad_b) = outputs(batched, x), outputs(looped, x)
        difference = max((out_a - out_b).abs().max().item(), (grad_a - grad_b).abs().max().item())
        print(f"max |difference| of output and input gradient: {difference:.1e}")
        batched_step, looped_step = timed_step(batched, x), timed_step(looped, x)
        batched_step(), looped_step()  # warm-up
        times = compare(batched_step, looped_step, args.rounds)
        a, b = times.ours_s, times.baseline_s
        print(f"  {'seconds per step':24}{'median':>10}{'best':>10}")
        print(f"  {'batched (A)':24}{statistics.median(a):10.4f}{min(a):10.4f}")
        print(f"  {'per-expert loop (B)':24}{statistics.median(b):10.4f}{min(b):10.4f}")
        print(f"  {'ratio B/A':24}{statistics.median(b) / statistics.median(a):10.2f}{min(b) / min(a):10.2f}")
    return a, b


if __name__ == "__main__":
    main()
