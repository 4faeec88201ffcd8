"""4M's chained any-to-any sampler: MaskGIT and ROAR for token grids, autoregression for sequences, and
classifier-free guidance, on a :class:`~polymodal.families.fourm.model.FourM` through its step methods.

Per step of a :class:`~polymodal.families.fourm.generate.schedules.GenerationSchedule`, on a generation batch
(:mod:`polymodal.families.fourm.generate.inputs`: ``is_target`` marks what is still to generate):

* MaskGIT: the encoder takes every current input (the target's filled positions included); the decoder queries
  every pending position of the target; all are sampled and the ``num_tokens`` with the highest sampled-token
  probability are kept (no Gumbel noise, as 4M);
* ROAR: ``num_tokens`` pending positions, drawn at random per sample, are queried, sampled and all kept;
* autoregressive: the encoder runs once; the decoder is rerun on the growing span (no KV cache), from the opening
  sentinel until every sample has written the closing sentinel or ``max_tokens`` tokens; the spans are then merged
  into the sequence, which becomes a full input;
* guidance: with ``cfg_scale != 1`` and conditioning domains, a second pass runs with those domains emptied
  (:func:`~polymodal.families.fourm.generate.inputs.empty_conditioning`) and the logits are ``l_u + s·(l_c − l_u)``.

Generation ignores the model's training token budgets (every input and every query is kept) and runs in eval and
inference mode. Every draw comes from the ``torch.Generator`` given to :meth:`GenerationSampler.generate`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from polymodal.families.fourm.generate.inputs import (
    Batch,
    Entry,
    batch_size_of,
    closing_sentinel,
    empty_conditioning,
    merged_sequence_input,
    row_inputs,
)
from polymodal.families.fourm.generate.schedules import GenerationSchedule, GenerationStep
from polymodal.families.fourm.model.fourm import FourM, valid_first_order
from polymodal.models.sampling import sample_tokens
from polymodal.tokenizers.text.wordpiece import DEFAULT_LAYOUT, WordPieceLayout

Context = tuple[Tensor, Tensor]  # decoder context [B, N, D] and its validity [B, N]


@contextmanager
def without_token_budgets(model: FourM) -> Iterator[None]:
    """Lift the model's training budgets (``num_encoder_tokens`` / ``num_decoder_tokens``) for the block."""
    saved = model.num_encoder_tokens, model.num_decoder_tokens
    model.num_encoder_tokens = model.num_decoder_tokens = None
    try:
        yield
    finally:
        model.num_encoder_tokens, model.num_decoder_tokens = saved


def _filled(entry: Entry, positions: Tensor, values: Tensor) -> Entry:
    """``entry`` with ``values`` written at ``positions`` ([B, K]), which move from target to input."""
    return {
        "tensor": entry["tensor"].scatter(1, positions, values),
        "is_input": entry["is_input"].scatter(1, positions, True),
        "is_target": entry["is_target"].scatter(1, positions, False),
    }


class GenerationSampler:
    """Runs generation schedules on a :class:`FourM` (module docstring)."""

    def __init__(self, model: FourM, layout: WordPieceLayout = DEFAULT_LAYOUT) -> None:
        if not isinstance(model, FourM):
            raise ValueError(f"GenerationSampler needs a FourM model, got {type(model).__name__}")
        self.model = model
        self.layout = layout

    def generate(self, batch: Mapping[str, Entry], schedule: GenerationSchedule, generator: torch.Generator) -> Batch:
        """Run every step of ``schedule`` on ``batch`` (not modified) and return the generated batch."""
        state = dict(batch)
        for _, _, after_step in self.generate_iter(batch, schedule, generator):
            state = after_step
        return state

    def generate_iter(
        self, batch: Mapping[str, Entry], schedule: GenerationSchedule, generator: torch.Generator
    ) -> Iterator[tuple[int, GenerationStep, Batch]]:
        """Yield ``(step index, step, batch after the step)`` for each step of ``schedule``."""
        self.check(batch, schedule)
        state = dict(batch)
        self.model.eval()
        run = {"maskgit": self._maskgit, "roar": self._roar, "autoregressive": self._autoregressive}
        for index, step in enumerate(schedule.steps):
            with torch.inference_mode(), without_token_budgets(self.model):
                state = {**state, step.target: run[step.scheme](state, step, schedule, generator)}
            yield index, step, state

    def check(self, batch: Mapping[str, Entry], schedule: GenerationSchedule) -> None:
        """Raise a ValueError naming the problem when ``schedule`` cannot run on ``batch`` with this model."""
        batch_size_of(batch)
        modalities = self.model.modalities
        for step in schedule.steps:
            if step.target not in modalities:
                raise ValueError(f"unknown target modality {step.target!r}; the model has {list(modalities)}")
            if step.target not in self.model.decoder_embeddings:
                raise ValueError(
                    f"the model cannot predict {step.target!r}; it predicts {list(self.model.decoder_embeddings)}"
                )
            if modalities[step.target].is_sequence != (step.scheme == "autoregressive"):
                raise ValueError(f"target {step.target!r} ({modalities[step.target].kind}) cannot use {step.scheme}")
            missing = [name for name in (step.target, *step.cfg_domains) if name not in batch]
            if missing:
                raise ValueError(f"step for {step.target!r}: modalities {missing} are not in the generation batch")
        missing = [name for name in schedule.cond_domains if name not in batch]
        if missing:
            raise ValueError(f"conditioning modalities {missing} are not in the generation batch")

    def unconditional_batch(self, batch: Mapping[str, Entry], domains: tuple[str, ...]) -> Batch:
        """``batch`` with the ``domains`` emptied, for the unconditional pass of guidance."""
        modalities = self.model.modalities
        return {name: empty_conditioning(modalities[name], e) if name in domains else e for name, e in batch.items()}

    def step_logits(self, batch: Mapping[str, Entry], step: GenerationStep, queries: Tensor) -> Tensor:
        """``[B, n, V]`` (guided) logits of ``step.target`` at the ``queries`` positions ``[B, N]`` (n per sample,
        in position order), for MaskGIT / ROAR."""
        with torch.inference_mode(), without_token_budgets(self.model):
            return self._guided(self._contexts(batch, step), step, self._query_entry(batch, step, queries))

    def _guided_pass(self, step: GenerationStep) -> bool:
        return step.cfg_scale != 1.0 and bool(step.cfg_domains)

    def _contexts(self, batch: Mapping[str, Entry], step: GenerationStep) -> list[Context]:
        """The conditional decoder context, and the unconditional one when ``step`` is guided."""
        batches = [batch, self.unconditional_batch(batch, step.cfg_domains)] if self._guided_pass(step) else [batch]
        contexts = []
        for each in batches:
            inputs = self.model.embed_inputs(each)
            contexts.append((self.model.decoder_context(self.model.encode(inputs), inputs), inputs.valid))
        return contexts

    def _logits(self, context: Context, target: str, entry: Entry) -> Tensor:
        queries = self.model.embed_targets({target: entry})
        hidden = self.model.decode(queries, *context)
        logits = self.model.predict(hidden, queries)[0][target]
        return logits.reshape(entry["tensor"].shape[0], -1, logits.shape[-1])

    def _guided(self, contexts: list[Context], step: GenerationStep, entry: Entry) -> Tensor:
        conditional = self._logits(contexts[0], step.target, entry)
        if len(contexts) == 1:
            return conditional
        unconditional = self._logits(contexts[1], step.target, entry)
        return unconditional + step.cfg_scale * (conditional - unconditional)

    @staticmethod
    def _sample(
        logits: Tensor, step: GenerationStep, schedule: GenerationSchedule, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return sample_tokens(logits, step.temperature, generator, schedule.top_k, schedule.top_p)

    @staticmethod
    def _per_sample_count(step: GenerationStep, positions: Tensor) -> int:
        """The number of selected ``positions`` [B, N], the same in every sample (else a ValueError)."""
        counts = positions.sum(1)
        if bool((counts != counts[0]).any()):
            raise ValueError(f"target {step.target!r}: samples have different numbers of positions {counts.tolist()}")
        return int(counts[0])

    def _query_entry(self, batch: Mapping[str, Entry], step: GenerationStep, queries: Tensor) -> Entry:
        self._per_sample_count(step, queries)
        return {**batch[step.target], "is_target": queries}

    def _maskgit(
        self, batch: Batch, step: GenerationStep, schedule: GenerationSchedule, generator: torch.Generator
    ) -> Entry:
        entry = batch[step.target]
        pending = entry["is_target"]
        num_pending = self._per_sample_count(step, pending)
        select = min(step.num_tokens, num_pending)
        if select == 0:
            return entry
        logits = self._guided(self._contexts(batch, step), step, self._query_entry(batch, step, pending))
        samples, probs = self._sample(logits.flatten(0, 1), step, schedule, generator)
        samples, probs = samples.view(-1, num_pending), probs.view(-1, num_pending)
        keep = probs.topk(select, dim=1).indices
        positions = valid_first_order(pending, num_pending).gather(1, keep)
        return _filled(entry, positions, samples.gather(1, keep))

    def _roar(
        self, batch: Batch, step: GenerationStep, schedule: GenerationSchedule, generator: torch.Generator
    ) -> Entry:
        entry = batch[step.target]
        pending = entry["is_target"]
        select = min(step.num_tokens, self._per_sample_count(step, pending))
        if select == 0:
            return entry
        scores = torch.rand(pending.shape, generator=generator, device=generator.device).to(pending.device)
        drawn = scores.masked_fill(~pending, 2.0).argsort(dim=1)[:, :select]
        queries = torch.zeros_like(pending).scatter(1, drawn, True)
        logits = self._guided(self._contexts(batch, step), step, self._query_entry(batch, step, queries))
        samples, _ = self._sample(logits.flatten(0, 1), step, schedule, generator)
        return _filled(entry, valid_first_order(queries, select), samples.view(-1, select))

    def _autoregressive(
        self, batch: Batch, step: GenerationStep, schedule: GenerationSchedule, generator: torch.Generator
    ) -> Entry:
        entry, spec = batch[step.target], self.model.modalities[step.target]
        if not bool(entry["is_target"].any(1).all()):
            raise ValueError(f"sequence target {step.target!r}: some samples have no target block to generate")
        starts = entry["is_target"].long().argmax(dim=1)
        closing = torch.tensor([closing_sentinel(ids, self.layout) for ids in row_inputs(entry)], device=starts.device)
        generated = entry["tensor"].gather(1, starts[:, None])
        contexts = self._contexts(batch, step)
        finished = torch.zeros_like(closing, dtype=torch.bool)
        room = entry["tensor"].shape[1] - int(starts.max()) - 1
        for _ in range(min(spec.max_tokens, room)):
            logits = self._guided(contexts, step, self._prefix_entry(entry, starts, generated))[:, -1]
            token, _ = self._sample(logits, step, schedule, generator)
            generated = torch.cat([generated, token[:, None]], dim=1)
            finished |= token == closing
            if bool(finished.all()):
                break
        return merged_sequence_input(spec, entry, generated, self.layout)

    @staticmethod
    def _prefix_entry(entry: Entry, starts: Tensor, generated: Tensor) -> Entry:
        """Decoder queries for the span so far: ``generated`` ([B, k]) from each row's start, plus one slot, so the
        last query predicts the next token (the model predicts position i + 1 from position i)."""
        length = generated.shape[1]
        positions = starts[:, None] + torch.arange(length + 1, device=starts.device)
        tensor = torch.zeros_like(entry["tensor"]).scatter(1, positions[:, :length], generated)
        is_target = torch.zeros_like(entry["is_target"]).scatter(1, positions, True)
        return {"tensor": tensor, "is_input": torch.zeros_like(is_target), "is_target": is_target}
