"""4M masking: our batched, vectorised :class:`FourMMasking` against a per-sample Python loop (as 4M does it).

Both sides run the same algorithm on the same raw batch of a 4M-7-like registry (six 14x14 token modalities,
caption and det of ``--seq-tokens`` tokens; with ``--t5-caption`` also 4M's ``t5_caption``, 77 x 4096 float32 vectors
per sample, a ``seq_emb`` input: upstream copies each sample's kept vectors into a zero block, ours hands the
vectors over uncopied with a row index) with 4M's budgets (input and target ``--tokens``, one Dirichlet with
alpha 0.5, budget above a cap dropped as upstream: ``redistribute_capped_budget=False``):

* (A) ours: ``FourMMasking(...)(raw_batch, generator)``: budgets for the whole batch, argsort image masks, span
  masking by cumulative sums, every draw from one ``torch.Generator``.
* (B) baseline: for each sample, 4M's ``UnifiedMasking`` steps with plain Python and per-sample torch calls:
  ``torch.distributions.Dirichlet`` budgets (floor + argmax remainder, clamp), ``argsort(rand(N))`` image masks,
  list-based span masking with the keep-probability decay, truncation at a sentinel; then the rows are stacked
  into the same masked-batch layout (target right after the input).

The sides alternate A/B, B/A, ... for ``--rounds`` rounds of ``--batches`` batches; the median and best
samples/s are reported. Both run with ``--threads`` torch threads (default 1: masking runs in DataLoader workers,
which torch limits to one thread each; on a shared 2-core machine, 2 threads made our batched ops ~30x slower
through OpenMP contention).

    python benchmarks/masking.py                 # batch 256, ~1 minute on 2 cores
    python benchmarks/masking.py --t5-caption    # with a seq_emb modality
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence

import torch
from timing import Comparison, compare, measuring, parse_with_threads, rate_table

from polymodal.families.fourm.masking.alphas import DirichletMixture
from polymodal.families.fourm.masking.budgets import TokenBudgets
from polymodal.families.fourm.masking.masker import FourMMasking, MaskedBatch, parse_raw_batch
from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.tokenizers.text.wordpiece import EOS_ID, sentinel_id

IMAGE_MODALITIES = ("tok_rgb@224", "tok_depth@224", "tok_semseg@224", "tok_normal@224", "tok_clip@224",
                    "tok_sam_edge@224")  # fmt: skip
SEQUENCE_MODALITIES = ("caption", "det")
EMBEDDING_MODALITY = "t5_caption"
SEED = 0
KEEP_PROB_DECAY = 0.9


def build_registry(seq_tokens: int, t5_caption: bool = False) -> ModalityRegistry:
    overrides = {name: {"max_tokens": seq_tokens} for name in SEQUENCE_MODALITIES}
    embeddings = (EMBEDDING_MODALITY,) if t5_caption else ()
    return ModalityRegistry.from_config([*IMAGE_MODALITIES, *SEQUENCE_MODALITIES, *embeddings], overrides)


def build_masking(registry: ModalityRegistry, tokens: int) -> FourMMasking:
    alphas = DirichletMixture.single(registry, 0.5, 0.5)
    return FourMMasking(registry, tokens, tokens, alphas, redistribute_capped_budget=False)


def synthetic_batch(registry: ModalityRegistry, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random codes, random vectors (every row valid), and sequences of random length (>= 1) ending in EOS,
    right-padded with 0."""
    g = torch.Generator().manual_seed(seed)
    raw = {}
    for name, spec in registry.items():
        if spec.is_image:
            raw[name] = torch.randint(0, spec.vocab_size, (batch_size, spec.num_positions()), generator=g)
            continue
        if spec.kind == "seq_emb":
            raw[name] = torch.randn(batch_size, spec.max_tokens, spec.embedding_dim, generator=g)
            continue
        lengths = torch.randint(1, spec.max_tokens + 1, (batch_size,), generator=g)
        positions = torch.arange(spec.max_tokens)
        ids = torch.randint(1000, spec.vocab_size, (batch_size, spec.max_tokens), generator=g)
        ids = torch.where(positions == (lengths - 1)[:, None], EOS_ID, ids)
        raw[name] = torch.where(positions < lengths[:, None], ids, 0)
    return raw


# ---------------------------------------------------------------- (B) per-sample baseline


def baseline_split(total: int, dirichlet: torch.distributions.Dirichlet, caps: list[int]) -> list[int]:
    """4M's budget split of one sample: floor, leftover tokens to the argmax of fresh draws, clamp (drop)."""
    budget = (dirichlet.sample() * total).floor().long()
    leftover = total - int(budget.sum())
    if leftover:
        budget += torch.bincount(dirichlet.sample((leftover,)).argmax(-1), minlength=len(caps))
    return [min(int(b), cap) for b, cap in zip(budget, caps, strict=True)]


def baseline_budgets(registry: ModalityRegistry, tokens: int, batch_size: int, rng: random.Random) -> TokenBudgets:
    """Per-sample budgets (one component, alpha 0.5; torch's global RNG for the Dirichlet, as upstream)."""
    specs = list(registry.values())
    input_caps = [spec.num_positions() if spec.is_image else spec.max_tokens for spec in specs]
    dirichlet = torch.distributions.Dirichlet(torch.full((len(specs),), 0.5))
    inputs, targets = [], []
    for _ in range(batch_size):
        rng.randint(0, 0)  # the component draw of a one-component mixture
        input_budget = baseline_split(tokens, dirichlet, input_caps)
        caps = [
            0 if not spec.decoder else spec.num_positions() - b if spec.is_image else spec.max_tokens
            for spec, b in zip(specs, input_budget, strict=True)
        ]
        inputs.append(input_budget)
        targets.append(baseline_split(tokens, dirichlet, caps))
    zeros = torch.zeros(batch_size, dtype=torch.long)
    return TokenBudgets(zeros, torch.tensor(inputs), torch.tensor(targets))


def baseline_span_masking(ids: list[int], keep_prob: float) -> tuple[list[int], list[int]]:
    """4M's ``simple_span_masking`` (keep a token iff its uniform is below ``keep_prob``)."""
    inputs, targets, previous_dropped, spans = [], [], False, 0
    for token, uniform in zip(ids, torch.rand(len(ids)).tolist(), strict=True):
        dropped = uniform >= keep_prob
        if dropped:
            if not previous_dropped:
                spans += 1
                inputs.append(sentinel_id(spans))
                targets.append(sentinel_id(spans))
            targets.append(token)
        else:
            inputs.append(token)
        previous_dropped = dropped
    targets.append(sentinel_id(spans + 1))
    return inputs, targets


def baseline_input_masking(ids: list[int], input_budget: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """4M's span masking of one sample (keep ``random``) with the keep-probability decay."""
    if input_budget == 0:
        return [], baseline_span_masking(ids, 0.0)[1]
    keep_prob = rng.random()
    inputs, targets = baseline_span_masking(ids, keep_prob)
    while len(inputs) > input_budget:
        keep_prob *= KEEP_PROB_DECAY
        inputs, targets = baseline_span_masking(ids, keep_prob)
    return inputs, targets


def baseline_sequence(ids: list[int], input_budget: int, target_budget: int, length: int, rng: random.Random):
    """4M's ``sequence_mask`` for one sample (keep ``random``), laid out with the target right after the input."""
    inputs, targets = baseline_input_masking(ids, input_budget, rng)
    if len(targets) > target_budget:
        sentinels = [i for i, token in enumerate(targets) if sentinel_id(0) < token <= sentinel_id(199)]
        picked = sentinels[rng.randrange(max(1, len(sentinels) - 1))]
        if len(targets) - picked >= target_budget:
            targets = targets[picked : picked + target_budget]
        else:
            targets = targets[next(i for i in sentinels if len(targets) - i <= target_budget) :]
    tensor = torch.zeros(length, dtype=torch.long)
    is_input = torch.zeros(length, dtype=torch.bool)
    is_target = torch.zeros(length, dtype=torch.bool)
    tensor[: len(inputs)] = torch.tensor(inputs, dtype=torch.long)
    is_input[: len(inputs)] = True
    end = len(inputs) + len(targets)
    tensor[len(inputs) : end] = torch.tensor(targets, dtype=torch.long)
    is_target[len(inputs) : end] = True
    return tensor, is_input, is_target


def baseline_embedding(vectors: torch.Tensor, input_budget: int, length: int, rng: random.Random):
    """4M's ``sequence_emb_mask_span`` for one sample: span-mask stand-in ids (positions past the sentinel ids),
    then copy each kept vector into a zero (length, E) block (a zero vector at each sentinel)."""
    first_id = sentinel_id(199) + 1
    inputs, _ = baseline_input_masking(list(range(first_id, first_id + len(vectors))), input_budget, rng)
    rows = {first_id + i: vectors[i, :] for i in range(len(vectors))}
    tensor = torch.zeros(length, vectors.shape[1])
    for position, token in enumerate(inputs):
        if token in rows:
            tensor[position, :] = rows[token]
    is_input = torch.zeros(length, dtype=torch.bool)
    is_input[: len(inputs)] = True
    return tensor, is_input, torch.zeros(length, dtype=torch.bool)


def baseline_image(num_positions: int, input_budget: int, target_budget: int):
    """4M's ``image_mask`` for one sample, as selection masks."""
    order = torch.argsort(torch.rand(num_positions))
    is_input = torch.zeros(num_positions, dtype=torch.bool)
    is_input[order[:input_budget]] = True
    is_target = torch.zeros(num_positions, dtype=torch.bool)
    is_target[order[input_budget : input_budget + target_budget]] = True
    return is_input, is_target


def baseline_mask(
    registry: ModalityRegistry, raw: dict[str, torch.Tensor], budgets: TokenBudgets, rng: random.Random
) -> MaskedBatch:
    """Mask each sample on its own with the given budgets, then stack the rows."""
    rows: dict[str, list[tuple[torch.Tensor, ...]]] = {name: [] for name in registry}
    for b in range(budgets.input.shape[0]):
        for column, (name, spec) in enumerate(registry.items()):
            input_budget, target_budget = int(budgets.input[b, column]), int(budgets.target[b, column])
            if spec.is_image:
                rows[name].append(baseline_image(spec.num_positions(), input_budget, target_budget))
            elif spec.kind == "seq_emb":
                rows[name].append(baseline_embedding(raw[name][b], input_budget, spec.max_tokens, rng))
            else:
                ids = [token for token in raw[name][b].tolist() if token]
                rows[name].append(baseline_sequence(ids, input_budget, target_budget, spec.num_positions(), rng))
    masked = {}
    for name, spec in registry.items():
        if spec.is_image:
            is_input, is_target = (torch.stack(masks) for masks in zip(*rows[name], strict=True))
            masked[name] = {"tensor": raw[name], "is_input": is_input, "is_target": is_target}
        else:
            tensor, is_input, is_target = (torch.stack(parts) for parts in zip(*rows[name], strict=True))
            masked[name] = {"tensor": tensor, "is_input": is_input, "is_target": is_target}
    return masked


def baseline_masking(registry: ModalityRegistry, tokens: int, raw: dict[str, torch.Tensor], rng: random.Random):
    """(B): per-sample budgets, then per-sample masks."""
    budgets = baseline_budgets(registry, tokens, raw[next(iter(registry))].shape[0], rng)
    return baseline_mask(registry, raw, budgets, rng)


def ours_with_budgets(masking: FourMMasking, raw: dict[str, torch.Tensor], budgets: TokenBudgets, seed: int):
    """(A) fed given budgets (for comparing both sides on the same budgets)."""
    parsed = parse_raw_batch(masking.modalities, raw)
    return masking.mask_with_budgets(parsed, budgets, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- measuring


def seconds(run: Callable[[int], object], batches: int) -> float:
    started = time.perf_counter()
    for index in range(batches):
        run(index)
    return time.perf_counter() - started


def report(result: Comparison, batch_size: int, batches: int) -> str:
    samples = batch_size * batches
    ours = [samples / s for s in result.ours_s]
    baseline = [samples / s for s in result.baseline_s]
    labels = ("ours, batched (A)", "per-sample loop (B)", "ratio ours/baseline")
    return "\n".join(
        [
            f"masking: {len(ours)} rounds of {batches} batches x {batch_size}",
            *rate_table("samples", labels, ours, baseline),
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128, help="input and target token budget per sample")
    parser.add_argument("--seq-tokens", type=int, default=40, help="max_tokens of caption and det")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per side and round")
    parser.add_argument("--t5-caption", action="store_true", help="add t5_caption (77 x 4096 float32, seq_emb)")
    positive = ("batch_size", "tokens", "seq_tokens", "rounds", "batches")
    return parse_with_threads(parser, argv, positive, default_threads=1)


def main(argv: Sequence[str] | None = None) -> Comparison:
    """Run the A/B rounds with ``--threads`` torch threads, print the report and return the measurements."""
    args = parse_args(argv)
    with measuring(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> Comparison:
    registry = build_registry(args.seq_tokens, args.t5_caption)
    masking = build_masking(registry, args.tokens)
    raw = synthetic_batch(registry, args.batch_size, SEED)
    rng = random.Random(SEED)
    torch.manual_seed(SEED)  # the baseline draws from torch's global RNG, as upstream does

    def ours() -> float:
        return seconds(lambda index: masking(raw, torch.Generator().manual_seed(index)), args.batches)

    def baseline() -> float:
        return seconds(lambda index: baseline_masking(registry, args.tokens, raw, rng), args.batches)

    masking(raw, torch.Generator().manual_seed(0))  # warm-up
    result = compare(ours, baseline, args.rounds)
    print(
        f"registry: {len(IMAGE_MODALITIES)} x 14x14 token grids + {'/'.join(SEQUENCE_MODALITIES)} of "
        f"{args.seq_tokens} tokens{' + t5_caption 77 x 4096' if args.t5_caption else ''}; budgets "
        f"{args.tokens}/{args.tokens}, alpha 0.5",
        flush=True,
    )
    print(report(result, args.batch_size, args.batches), flush=True)
    return result


if __name__ == "__main__":
    main()
