"""The masked batch with the most tokens 4M masking gives for a pair of budgets, made without data (for planning).

Every modality is present in every sample and the budgets are used to the full. The ``target_tokens`` go to the
decoder modalities with the largest vocabularies first, each up to its cap (:func:`target_cap`), so the heads'
logits are the largest any batch of these budgets can have; the ``input_tokens`` then fill the encoder modalities
in registry order, up to their caps (:func:`input_cap`) and beside the targets. Which positions are inputs changes
no shape (the encoder always sees ``min(positions, num_encoder_tokens)`` tokens), only which are targets does.

The layout is :class:`FourMMasking`'s: an image's inputs and targets are grid positions (targets first, then
inputs), a sequence's input sits at ``0 .. n_in - 1`` with its target right after. Token ids are 0 (valid in every
vocabulary); pixels and embedding vectors are zeros.
"""

from __future__ import annotations

import torch

from polymodal.families.fourm.masking.masker import MaskedBatch, input_cap, target_cap
from polymodal.families.fourm.modalities import ModalityRegistry, ModalitySpec

TokenCounts = dict[str, tuple[int, int]]  # modality -> (input tokens, target tokens) of one sample


def largest_token_counts(modalities: ModalityRegistry, input_tokens: int, target_tokens: int) -> TokenCounts:
    """Per modality, the input and target tokens of one sample of the largest batch (module docstring)."""
    targets: dict[str, int] = {}
    left = target_tokens
    for spec in sorted(modalities.decoder_modalities(), key=lambda spec: -spec.vocab_size):
        targets[spec.name] = min(left, target_cap(spec, target_budget=True))
        left -= targets[spec.name]
    counts: TokenCounts = {}
    left = input_tokens
    for name, spec in modalities.items():
        room = input_cap(spec) - (targets.get(name, 0) if spec.is_image else 0)
        inputs = min(left, room)
        left -= inputs
        counts[name] = (inputs, targets.get(name, 0))
    return counts


def _values(spec: ModalitySpec, batch_size: int, device: torch.device | str) -> torch.Tensor:
    if spec.is_pixels:
        return torch.zeros(batch_size, spec.num_channels, spec.resolution, spec.resolution, device=device)
    if spec.kind == "seq_emb":
        return torch.zeros(batch_size, spec.max_tokens, spec.embedding_dim, device=device)
    return torch.zeros(batch_size, spec.num_positions(), dtype=torch.long, device=device)


def _selection(start: int, count: int, length: int, batch_size: int, device: torch.device | str) -> torch.Tensor:
    """``[B, length]`` bool, True at positions ``start .. start + count - 1`` of every row."""
    positions = torch.arange(length, device=device)
    return ((positions >= start) & (positions < start + count)).repeat(batch_size, 1)


def largest_masked_batch(
    modalities: ModalityRegistry, batch_size: int, counts: TokenCounts, device: torch.device | str
) -> MaskedBatch:
    """The masked batch (``{name: {"tensor", "is_input", "is_target"}}``) of ``counts`` tokens per sample."""
    batch: MaskedBatch = {}
    for name, spec in modalities.items():
        inputs, targets = counts[name]
        length = spec.num_positions()
        input_start = targets if spec.is_image else 0
        target_start = 0 if spec.is_image else inputs
        batch[name] = {
            "tensor": _values(spec, batch_size, device),
            "is_input": _selection(input_start, inputs, length, batch_size, device),
            "is_target": _selection(target_start, targets, length, batch_size, device),
        }
    return batch
