"""Autoregressive image generation of the image–text family: the key/value cache against recomputing the prefix,
and classifier-free guidance in one batch against two separate passes.

Model: the shape of the tiny Lumina config (``configs/lumina/model.yaml``: vocabulary 5096, width 128, 4 layers of
4 heads, SwiGLU 352, per-head QK-norm) with random weights from a fixed seed (speed does not depend on the
weights). Prompts: ``--batch-size`` rows of ``<|bos|>``, ``--prompt-tokens`` random text ids, ``<|eot|>`` and the
image's head ``<|boi|> <|h|> <|w|>``; each side then draws ``--new-tokens`` image codes per row, greedily:

* **cache** — (A) :class:`~polymodal.models.decoding.IncrementalDecoder`: the prompts run once, then one token per
  row per forward; (B) each step runs the whole sequence so far again (``CausalLM.generate`` before the cache).
* **guidance** at ``--cfg-scale`` — (A) :class:`~polymodal.families.lumina.generate.sampler.GuidedDecoder`: the
  conditional rows and their unconditional rows (``<|boi|> <|h|> <|w|>`` and the codes so far) in one batch with
  one cache; (B) one cached decoder per branch, two forwards per step (upstream ran the unconditional branch as a
  second forward with its own cache, one row at a time).

The two sides of a comparison must draw the same tokens; the script says whether they did (they could only part at
a float near-tie of two logits). They alternate A/B, B/A, ... for ``--rounds`` rounds after one warm-up each, with
``--threads`` torch threads (default 1: on a shared 2-core box more threads mostly measure the scheduler).

    python benchmarks/ar_generation.py                 # ~1.5 minutes on 2 cores
    python benchmarks/ar_generation.py --new-tokens 512 --batch-size 8
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from timing import Comparison, compare, measuring, parse_with_threads, rate_table
from torch import Tensor, nn

from polymodal.families.lumina.generate.sampler import FIRST_TEXT_ID, GuidedDecoder, classifier_free_guidance
from polymodal.families.lumina.model import build_chameleon
from polymodal.families.lumina.vocabulary import VocabularyLayout
from polymodal.models.decoding import IncrementalDecoder

LAYOUT = VocabularyLayout(text_vocab_size=4096, codebook_size=1000)  # docs/lumina.md's example records
SEED = 0
Draw = Callable[[], Tensor]


@dataclass
class Results:
    """Seconds per round of both comparisons, and whether each pair of sides drew the same tokens."""

    cache: Comparison
    guidance: Comparison
    cache_tokens_identical: bool
    guidance_tokens_identical: bool


def build_model() -> nn.Module:
    torch.manual_seed(SEED)
    model = build_chameleon(LAYOUT.vocab_size, dim=128, depth=4, num_heads=4, ffn_dim=352, max_seq_len=4096)
    return model.eval()


def prompts(batch_size: int, prompt_tokens: int) -> tuple[list[Tensor], list[Tensor]]:
    """The conditional rows (``<|bos|>`` text ``<|eot|>`` image head) and their unconditional rows (the head)."""
    generator = torch.Generator().manual_seed(SEED)
    text = torch.randint(FIRST_TEXT_ID, LAYOUT.text_vocab_size, (batch_size, prompt_tokens), generator=generator)
    head = torch.tensor([LAYOUT.begin_image, LAYOUT.height_token(16), LAYOUT.width_token(16)])
    bos, end = torch.tensor([LAYOUT.bos]), torch.tensor([LAYOUT.end_of_turn])
    return [torch.cat([bos, row, end, head]) for row in text], [head] * batch_size


def greedy_code(logits: Tensor) -> Tensor:
    return logits[:, LAYOUT.image_offset :].argmax(-1) + LAYOUT.image_offset


# ---------------------------------------------------------------- the cache


def cached(model: nn.Module, rows: Sequence[Tensor], new_tokens: int) -> Tensor:
    """(A): prefill once, then one token per forward."""
    decoder = IncrementalDecoder(model)
    drawn = [greedy_code(decoder.prefill(rows, new_tokens))]
    for _ in range(new_tokens - 1):
        drawn.append(greedy_code(decoder.extend(drawn[-1][:, None])))
    return torch.stack(drawn, dim=1)


def recomputed(model: nn.Module, rows: Sequence[Tensor], new_tokens: int) -> Tensor:
    """(B): the whole sequence again at every step (the rows have one length: no padding)."""
    tokens = torch.stack(list(rows))
    for _ in range(new_tokens):
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        batch = {"input_ids": tokens, "document_ids": torch.zeros_like(tokens), "position_ids": positions}
        tokens = torch.cat([tokens, greedy_code(model(batch)["logits"][:, -1])[:, None]], dim=1)
    return tokens[:, -new_tokens:]


# ---------------------------------------------------------------- guidance


def guided_one_batch(model: nn.Module, cond: list[Tensor], uncond: list[Tensor], scale: float, new: int) -> Tensor:
    """(A): ``[cond; uncond]`` in one batch, one cache."""
    decoder = GuidedDecoder(model, scale)
    drawn = [greedy_code(decoder.prefill(cond, uncond, new))]
    for _ in range(new - 1):
        drawn.append(greedy_code(decoder.extend(drawn[-1][:, None])))
    return torch.stack(drawn, dim=1)


def guided_two_passes(model: nn.Module, cond: list[Tensor], uncond: list[Tensor], scale: float, new: int) -> Tensor:
    """(B): one cached decoder per branch, two forwards per step."""
    conditional, unconditional = IncrementalDecoder(model), IncrementalDecoder(model)
    mixed = classifier_free_guidance(conditional.prefill(cond, new), unconditional.prefill(uncond, new), scale)
    drawn = [greedy_code(mixed)]
    for _ in range(new - 1):
        step = drawn[-1][:, None]
        mixed = classifier_free_guidance(conditional.extend(step), unconditional.extend(step), scale)
        drawn.append(greedy_code(mixed))
    return torch.stack(drawn, dim=1)


# ---------------------------------------------------------------- measuring


def measured(ours: Draw, baseline: Draw, rounds: int) -> tuple[Comparison, bool]:
    """Warm both up (their tokens must agree), then alternate them ``rounds`` times."""
    identical = torch.equal(ours(), baseline())

    def seconds(draw: Draw) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            draw()
            return time.perf_counter() - started

        return run

    return compare(seconds(ours), seconds(baseline), rounds), identical


def report(title: str, labels: tuple[str, str, str], result: Comparison, tokens: int, identical: bool) -> str:
    ours = [tokens / s for s in result.ours_s]
    baseline = [tokens / s for s in result.baseline_s]
    return "\n".join([f"{title}: tokens identical: {identical}", *rate_table("tokens", labels, ours, baseline)])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per batch")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=256, help="image codes drawn per row")
    parser.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds per comparison")
    return parse_with_threads(parser, argv, ("batch_size", "prompt_tokens", "new_tokens", "rounds"), default_threads=1)


def main(argv: Sequence[str] | None = None) -> Results:
    """Run both comparisons with ``--threads`` torch threads, print the report and return the measurements."""
    args = parse_args(argv)
    with measuring(args.threads), torch.inference_mode():
        return run(args)


def run(args: argparse.Namespace) -> Results:
    model = build_model()
    cond, uncond = prompts(args.batch_size, args.prompt_tokens)
    new, tokens = args.new_tokens, args.batch_size * args.new_tokens
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, vocabulary {LAYOUT.vocab_size}; "
        f"{args.batch_size} prompts of {len(cond[0])} tokens, {new} new tokens each",
        flush=True,
    )
    cache, cache_identical = measured(
        lambda: cached(model, cond, new), lambda: recomputed(model, cond, new), args.rounds
    )
    print(report("cache", ("cached (A)", "recomputed (B)", "ratio A/B"), cache, tokens, cache_identical), flush=True)
    guidance, guidance_identical = measured(
        lambda: guided_one_batch(model, cond, uncond, args.cfg_scale, new),
        lambda: guided_two_passes(model, cond, uncond, args.cfg_scale, new),
        args.rounds,
    )
    labels = ("one batch [cond; uncond] (A)", "two passes (B)", "ratio A/B")
    print(report(f"guidance at {args.cfg_scale:g}", labels, guidance, tokens, guidance_identical), flush=True)
    return Results(cache, guidance, cache_identical, guidance_identical)


if __name__ == "__main__":
    main()
