"""4M input/target masking of a whole batch: which tokens the encoder sees and which the decoder predicts.

Raw batch in: see :mod:`polymodal.families.fourm.masking.raw_batch`.

Masked batch out: ``{name: {"tensor", "is_input", "is_target"}}`` for every registry modality in the raw batch:

* images: ``tensor`` the codes (B, N) int64, or the pixels unchanged; masks (B, N);
* ``seq``/``seq_token``: ``tensor`` (B, L) int64, L = ``spec.num_positions()`` = 2 * (max_tokens + 1). The input
  (kept tokens, one sentinel per dropped span) sits at positions ``0 .. n_in - 1``, and the target
  (``[S_a] span [S_b] span ... [S_z]``) **right after it**, at ``n_in .. n_in + n_tg - 1`` (4M puts it at offset =
  the input budget, leaving a PAD gap; we don't). Everything else is PAD = 0;
* ``seq_emb``: ``tensor`` the raw vectors (B, T, E), not copied, and ``row_index`` (B, max_tokens): the row of
  ``tensor`` at each input position (the input rows first), -1 for a sentinel's zero vector; input only.

Mask conventions
----------------
``is_input`` and ``is_target`` are *selection* masks, and True always means "selected": ``is_input`` True =
this position is fed to the encoder; ``is_target`` True = this position is in the decoder's target. They are
never padding masks (4M's ``input_mask``/``target_mask`` used False = selected, and its ``encoder_mask`` /
``decoder_mask`` meant padding; users mixed them up, apple/ml-4m#11). A position is never both input and target.
A sequence's target block is marked whole, its opening sentinel included: the model teacher-forces it (position
i predicts i + 1), so the first token of the block is never itself predicted.

Randomness: every draw comes from the ``torch.Generator`` passed to the call (no python ``random``, no numpy,
no torch global RNG), so a batch is a function of (generator seed, raw batch). Draw order: budgets, then each
modality in registry order, then the order of the modalities in the returned dict.

Modality order: the model concatenates modalities in batch-dict order and keeps the first ``num_decoder_tokens``
targets, so a fixed order would starve the same modalities every step when the targets overflow. 4M shuffles its
modality order every forward pass; :class:`FourMMasking` returns its modalities in a random order per batch,
drawn from the same generator (so a resumed run replays it).

Vectorisation: budgets, image masks, span corruption and target truncation are batched tensor ops. The only
Python loops are over modalities, Gamma rejection rounds, budget redistribution rounds and the keep-probability
decay rounds of sequences whose input exceeds its budget (each round redraws only the failing rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from polymodal.families.fourm.masking.alphas import KEEP_SCHEMES, DirichletMixture
from polymodal.families.fourm.masking.budgets import TokenBudgets, draw_uniform, sample_token_budgets
from polymodal.families.fourm.masking.raw_batch import RawModality, parse_raw_batch
from polymodal.families.fourm.masking.spans import (
    SpanCorruption,
    input_lengths,
    max_spans,
    span_corrupt,
    target_window,
)
from polymodal.families.fourm.modalities import ModalitySpec, check_task_modalities
from polymodal.tokenizers.text.wordpiece import DEFAULT_LAYOUT, PAD_ID, WordPieceLayout

KEEP_PROB_DECAY = 0.9
MAX_KEEP_PROB_DECAYS = 100  # 0.9**100 ~ 3e-5; rows still too long after that drop every token (input [S_1])

MaskedModality = dict[str, torch.Tensor]
MaskedBatch = dict[str, MaskedModality]


def mask_image(
    input_budget: torch.Tensor, target_budget: torch.Tensor, num_positions: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_input, is_target), each (B, N): a random order per row; its first ``input_budget`` positions are input,
    the next ``target_budget`` are target."""
    batch_size = input_budget.shape[0]
    scores = draw_uniform((batch_size, num_positions), generator, torch.float32)  # float32: argsort is the cost
    order = scores.argsort(1).to(input_budget.device)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_positions, device=order.device).expand_as(order))
    is_input = rank < input_budget[:, None]
    is_target = ~is_input & (rank < (input_budget + target_budget)[:, None])
    return is_input, is_target


def draw_token_uniforms(valid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, T) float64 uniforms at the ``valid`` tokens, 1.0 at padding.

    Only real tokens consume draws (row by row), so a row's draws do not depend on how far it is padded: a
    caption gets the same mask whether ``samples.text_ids`` padded it to 12 or to 256 columns.
    """
    uniforms = torch.ones(valid.shape, dtype=torch.float64, device=valid.device)
    uniforms[valid] = draw_uniform((int(valid.sum()),), generator).to(valid.device)
    return uniforms


def draw_dropped(
    valid: torch.Tensor, keep_prob: torch.Tensor, input_budget: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """(B, T) bool dropped tokens, False at padding: each real token kept with probability ``keep_prob`` (B,),
    the whole row dropped where ``input_budget`` is 0, and redrawn with ``keep_prob *= 0.9`` while the input
    would exceed its budget (4M's per-sample rule, decided on the unpadded sequence).

    Bound: after :data:`MAX_KEEP_PROB_DECAYS` redraws a row still too long drops every token, so its input is
    the single sentinel ``[S_1]``, which fits any budget >= 1.
    """
    dropped = valid & ((draw_token_uniforms(valid, generator) >= keep_prob[:, None]) | (input_budget == 0)[:, None])
    too_long = (input_budget > 0) & (input_lengths(dropped, valid) > input_budget)
    keep_prob = keep_prob.clone()
    for _ in range(MAX_KEEP_PROB_DECAYS):
        rows = torch.nonzero(too_long).flatten()
        if rows.numel() == 0:
            return dropped
        keep_prob[rows] *= KEEP_PROB_DECAY
        dropped[rows] = valid[rows] & (draw_token_uniforms(valid[rows], generator) >= keep_prob[rows, None])
        too_long[rows] = input_lengths(dropped[rows], valid[rows]) > input_budget[rows]
    dropped[too_long] = valid[too_long]
    return dropped


def sequence_output(
    corruption: SpanCorruption,
    input_length: torch.Tensor,
    window: tuple[torch.Tensor, torch.Tensor],
    num_positions: int,
) -> MaskedModality:
    """Lay out ``seq`` rows: the first ``input_length`` input elements, then the target ``window`` (start,
    length) right after them; PAD elsewhere."""
    batch_size, length = corruption.inputs.shape
    device = corruption.inputs.device
    is_input = torch.zeros(batch_size, num_positions + 1, dtype=torch.bool, device=device)
    is_input[:, :length] = torch.arange(length, device=device) < input_length[:, None]
    tensor = torch.zeros(batch_size, num_positions + 1, dtype=torch.long, device=device)
    tensor[:, :length] = torch.where(is_input[:, :length], corruption.inputs, PAD_ID)
    start, window_length = window
    steps = torch.arange(corruption.targets.shape[1], device=device)
    in_window = steps < window_length[:, None]
    source = (start[:, None] + steps).clamp(max=corruption.targets.shape[1] - 1)
    destination = torch.where(in_window, input_length[:, None] + steps, num_positions)  # column L: discarded
    tensor.scatter_(1, destination, torch.where(in_window, corruption.targets.gather(1, source), PAD_ID))
    is_target = torch.zeros_like(is_input).scatter_(1, destination, in_window)
    return {
        "tensor": tensor[:, :num_positions],
        "is_input": is_input[:, :num_positions],
        "is_target": is_target[:, :num_positions],
    }


def embedding_output(
    corruption: SpanCorruption, input_length: torch.Tensor, embeddings: torch.Tensor, num_positions: int
) -> MaskedModality:
    """Lay out ``seq_emb`` rows without copying them: ``tensor`` is ``embeddings`` as given and ``row_index``
    (B, num_positions) says which of its rows each input position holds (-1: a sentinel's zero vector, or not an
    input); no target. T5 states are 4096 wide (323 MB per batch at B=256, T=77): the model projects them first
    and indexes the narrow result."""
    batch_size, length, _ = embeddings.shape
    is_input = torch.zeros(batch_size, num_positions, dtype=torch.bool, device=embeddings.device)
    is_input[:, :length] = torch.arange(length, device=embeddings.device) < input_length[:, None]
    row_index = torch.full((batch_size, num_positions), -1, dtype=torch.long, device=embeddings.device)
    row_index[:, :length] = torch.where(is_input[:, :length], corruption.input_source, -1)
    return {"tensor": embeddings, "is_input": is_input, "is_target": torch.zeros_like(is_input), "row_index": row_index}


def shuffle_modalities(masked: MaskedBatch, generator: torch.Generator) -> MaskedBatch:
    """``masked`` with its modalities in a random order (module docstring, "Modality order")."""
    names = list(masked)
    order = torch.randperm(len(names), generator=generator, device=generator.device).tolist()
    return {names[index]: masked[names[index]] for index in order}


def _span_ids(raw: RawModality) -> torch.Tensor:
    """Ids to span-corrupt: the tokens, or for embeddings their positions + 1 (only the layout is used)."""
    if raw.spec.kind == "seq_emb":
        return torch.arange(1, raw.values.shape[1] + 1, device=raw.values.device).expand(raw.values.shape[:2])
    return raw.values


def _layout_sequence(
    raw: RawModality, corruption: SpanCorruption, input_length: torch.Tensor, window: tuple[torch.Tensor, torch.Tensor]
) -> MaskedModality:
    if raw.spec.kind == "seq_emb":
        return embedding_output(corruption, input_length, raw.values, raw.spec.num_positions())
    return sequence_output(corruption, input_length, window, raw.spec.num_positions())


def _check_sentinels(modalities: Mapping[str, ModalitySpec], layout: WordPieceLayout) -> None:
    for spec in modalities.values():
        if spec.kind in ("seq", "seq_token") and max_spans(spec.max_tokens) + 1 >= layout.num_sentinels:
            raise ValueError(
                f"modality {spec.name!r}: {spec.max_tokens} tokens can need {max_spans(spec.max_tokens) + 1} "
                f"sentinels ([S_1] on), more than the layout's {layout.num_sentinels - 1}"
            )


def _token_range(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if not (isinstance(low, int) and isinstance(high, int)) or low < 0 or low > high:
        raise ValueError(f"{what} must be an int >= 0 or an inclusive (min, max) with 0 <= min <= max, got {value!r}")
    return low, high


def input_cap(spec: ModalitySpec) -> int:
    """The most input tokens of a modality in one sample. Images: the grid; sequences: ``max_tokens`` (an input
    never holds more); 0 for modalities the encoder does not take."""
    if not spec.encoder:
        return 0
    return spec.num_positions() if spec.is_image else spec.max_tokens


def target_cap(spec: ModalitySpec, target_budget: bool) -> int:
    """The most target tokens of a modality in one sample. Images: the grid (less the input, in the budgets);
    sequences: ``max_tokens``, or the whole row without a target budget; 0 for modalities the decoder does not
    predict."""
    if not spec.decoder:
        return 0
    if spec.is_image or not target_budget:
        return spec.num_positions()
    return spec.max_tokens


class FourMMasking:
    """4M's random masking of a batch (module docstring): Dirichlet-mixture budgets, random image positions, T5
    span masking of sequences.

    Args:
        modalities: the registry (its order fixes the budget columns and the draw order).
        input_tokens: per-sample input budget, or an inclusive (min, max) range.
        target_tokens: per-sample target budget or range; None: every non-input image position is a target and
            sequence targets are not truncated (4M without a target budget).
        alphas: the Dirichlet mixture; its modalities must be the registry's.
        redistribute_capped_budget: give budget above a modality's cap to the others (default); False drops it
            as upstream does.
        layout: the text id layout (sentinel ids).
    """

    def __init__(
        self,
        modalities: Mapping[str, ModalitySpec],
        input_tokens: int | tuple[int, int],
        target_tokens: int | tuple[int, int] | None,
        alphas: DirichletMixture,
        redistribute_capped_budget: bool = True,
        layout: WordPieceLayout = DEFAULT_LAYOUT,
    ) -> None:
        if tuple(alphas.modalities) != tuple(modalities):
            raise ValueError(
                f"alphas are for modalities {list(alphas.modalities)}, the registry has {list(modalities)}"
            )
        _check_sentinels(modalities, layout)
        self.modalities = modalities
        self.input_tokens = _token_range(input_tokens, "input_tokens")
        self.target_tokens = None if target_tokens is None else _token_range(target_tokens, "target_tokens")
        self.alphas = alphas
        self.redistribute_capped_budget = redistribute_capped_budget
        self.first_sentinel_id = layout.sentinel_id(0)
        specs = list(modalities.values())
        self._is_image = torch.tensor([spec.is_image for spec in specs])
        self._input_caps = torch.tensor([input_cap(spec) for spec in specs])
        self._target_caps = torch.tensor([target_cap(spec, self.target_tokens is not None) for spec in specs])
        self._keep_scheme = {  # (K,) index into KEEP_SCHEMES per sequence modality
            spec.name: torch.tensor([KEEP_SCHEMES.index(s) for s in alphas.keep_schemes(spec.name)])
            for spec in specs
            if spec.is_sequence
        }

    def __call__(self, raw_batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> MaskedBatch:
        raw = parse_raw_batch(self.modalities, raw_batch)
        return self.mask_with_budgets(raw, self.sample_budgets(raw, generator), generator)

    def sample_budgets(self, raw: Mapping[str, RawModality], generator: torch.Generator) -> TokenBudgets:
        """Budgets for a parsed raw batch (:func:`parse_raw_batch`); registry modalities it lacks get 0."""
        batch_size = next(iter(raw.values())).present.shape[0]
        device = generator.device
        present = torch.zeros(batch_size, len(self.modalities), dtype=torch.bool, device=device)
        for column, name in enumerate(self.modalities):
            if name in raw:
                present[:, column] = raw[name].present.to(device)
        return sample_token_budgets(
            self.alphas,
            present,
            self._input_caps.to(device) * present,
            self._target_caps.to(device) * present,
            self._is_image.to(device),
            self.input_tokens,
            self.target_tokens,
            generator,
            self.redistribute_capped_budget,
        )

    def mask_with_budgets(
        self, raw: Mapping[str, RawModality], budgets: TokenBudgets, generator: torch.Generator
    ) -> MaskedBatch:
        """Mask a parsed raw batch with given budgets (columns in registry order)."""
        masked = {}
        for column, name in enumerate(self.modalities):
            if name not in raw:
                continue
            modality = raw[name]
            device = modality.values.device
            input_budget = budgets.input[:, column].to(device)
            target_budget = budgets.target[:, column].to(device)
            if modality.spec.is_image:
                is_input, is_target = mask_image(input_budget, target_budget, modality.spec.num_positions(), generator)
                masked[name] = {"tensor": modality.values, "is_input": is_input, "is_target": is_target}
                continue
            keep_prob = self._keep_prob(name, budgets.component, generator).to(device)
            dropped = draw_dropped(modality.valid, keep_prob, input_budget, generator)
            corruption = span_corrupt(_span_ids(modality), modality.valid, dropped, self.first_sentinel_id)
            input_length = torch.where(input_budget > 0, corruption.input_lengths, 0)
            choice = draw_uniform((input_budget.shape[0],), generator).to(device)
            window = target_window(corruption, target_budget, choice)
            masked[name] = _layout_sequence(modality, corruption, input_length, window)
        return shuffle_modalities(masked, generator)

    def _keep_prob(self, name: str, component: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) keep probability of each sample: U(0, 1), 1 or a fair 0/1 by its component's keep scheme."""
        scheme = self._keep_scheme[name].to(component.device)[component]
        uniform = draw_uniform(tuple(component.shape), generator)
        coin = (draw_uniform(tuple(component.shape), generator) < 0.5).double()
        by_scheme = torch.stack([uniform, torch.ones_like(uniform), coin], dim=1)  # KEEP_SCHEMES order
        return by_scheme.gather(1, scheme[:, None]).squeeze(1)


class TransferMasking:
    """Fixed input -> target masking for fine-tuning / fixed tasks (4M's ``TransferMasking``); no randomness.

    An input image is entirely input, a target image entirely target. An input sequence is entirely input (its
    target is the lone ``[S_1]``); a target sequence has no input and the target ``[S_1] ids... [S_2]``. Raw-batch
    modalities in neither list come out with no input and no target; absent samples likewise.
    """

    def __init__(
        self,
        modalities: Mapping[str, ModalitySpec],
        inputs: Sequence[str],
        targets: Sequence[str],
        layout: WordPieceLayout = DEFAULT_LAYOUT,
    ) -> None:
        check_task_modalities(modalities, inputs, targets)
        _check_sentinels(modalities, layout)
        self.modalities = modalities
        self.inputs, self.targets = frozenset(inputs), frozenset(targets)
        self.first_sentinel_id = layout.sentinel_id(0)

    def __call__(self, raw_batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> MaskedBatch:
        """Mask ``raw_batch``; ``generator`` is unused (nothing is random) and accepted so that both maskings are
        called alike."""
        masked = {}
        for name, modality in parse_raw_batch(self.modalities, raw_batch).items():
            is_input_modality, is_target_modality = name in self.inputs, name in self.targets
            present = modality.present
            if modality.spec.is_image:
                shape = (present.shape[0], modality.spec.num_positions())
                masked[name] = {
                    "tensor": modality.values,
                    "is_input": (present[:, None] & is_input_modality).expand(shape).clone(),
                    "is_target": (present[:, None] & is_target_modality).expand(shape).clone(),
                }
                continue
            dropped = modality.valid & is_target_modality
            corruption = span_corrupt(_span_ids(modality), modality.valid, dropped, self.first_sentinel_id)
            input_length = torch.where(present & is_input_modality, corruption.input_lengths, 0)
            window_length = torch.where(
                present & (is_input_modality | is_target_modality), corruption.target_lengths, 0
            )
            window = (torch.zeros_like(window_length), window_length)
            masked[name] = _layout_sequence(modality, corruption, input_length, window)
        return masked
