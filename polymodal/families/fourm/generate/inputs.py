"""Generation batches: full inputs, empty targets, caption prompts, emptied conditioning, merged spans.

A generation batch follows the model's batch contract (``batch[m] = {"tensor", "is_input", "is_target"}``, the
layout of :mod:`polymodal.families.fourm.masking.masker`), with ``is_target`` meaning "still to generate":

* a full input: every token (image) or every non-PAD token (sequence, at positions ``0 .. n-1``) is input;
* an empty image target: codes 0, nothing input, every position a target; the sampler moves positions from
  target to input as it fills them;
* an empty sequence target: input ``[S_1]`` at position 0, the target block ``[S_1] ...`` right after it (4M's
  ``[S_1] [S_1] ... [S_2]``); a caption prompt ``"a red [S_1]"`` is the same with the prompt as input. The model
  writes the span of each input sentinel, ``[S_1] span [S_2] ...``, closed by the sentinel after the last input
  one, and :func:`merge_spans` splices it back: the whole sequence becomes input for the next chain step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor

from polymodal.families.fourm.modalities import ModalitySpec
from polymodal.families.fourm.samples import text_ids
from polymodal.tokenizers.text.wordpiece import DEFAULT_LAYOUT, PAD_ID, WordPieceLayout

Entry = dict[str, Tensor]
Batch = dict[str, Entry]


def _entry(tensor: Tensor, is_input: Tensor, is_target: Tensor) -> Entry:
    return {"tensor": tensor, "is_input": is_input, "is_target": is_target}


def full_input(spec: ModalitySpec, values: Tensor) -> Entry:
    """Every token of ``values`` as input: image codes ``[B, N]``/``[B, h, w]``, pixels ``[B, C, H, W]``, sequence
    ids ``[B, T]`` (T <= max_tokens, right-padded with PAD) or ``seq_emb`` vectors ``[B, T, E]`` (all rows valid)."""
    batch = values.shape[0]
    if spec.is_pixels:
        expected = (spec.num_channels, spec.resolution, spec.resolution)
        if tuple(values.shape[1:]) != expected or not values.is_floating_point():
            raise ValueError(f"modality {spec.name!r}: pixels must be float [B, {expected}], got {tuple(values.shape)}")
        selected = torch.ones(batch, spec.num_positions(), dtype=torch.bool, device=values.device)
        return _entry(values, selected, torch.zeros_like(selected))
    if spec.is_image:
        codes = values.reshape(batch, -1)
        if codes.shape[1] != spec.num_positions() or values.is_floating_point():
            raise ValueError(
                f"modality {spec.name!r}: codes must be integer [B, {spec.num_positions()}] or [B, *{spec.grid}], "
                f"got {values.dtype} {tuple(values.shape)}"
            )
        selected = torch.ones_like(codes, dtype=torch.bool)
        return _entry(codes.long(), selected, torch.zeros_like(selected))
    if values.shape[1] > spec.max_tokens:
        raise ValueError(f"modality {spec.name!r}: {values.shape[1]} tokens per row > max_tokens {spec.max_tokens}")
    length = spec.num_positions()
    if spec.kind == "seq_emb":
        tensor = values.new_zeros(batch, length, values.shape[2])
        tensor[:, : values.shape[1]] = values
        selected = torch.arange(length, device=values.device) < values.shape[1]
        selected = selected.expand(batch, -1).clone()
        return _entry(tensor, selected, torch.zeros_like(selected))
    tensor = torch.full((batch, length), PAD_ID, dtype=torch.long, device=values.device)
    tensor[:, : values.shape[1]] = values.long()
    selected = tensor != PAD_ID
    return _entry(tensor, selected, torch.zeros_like(selected))


def text_input(spec: ModalitySpec, tokenizer: Tokenizer, texts: Sequence[str]) -> Entry:
    """Texts as a full sequence input: WordPiece ids + ``[EOS]`` as the training data prepares them."""
    return full_input(spec, torch.stack([text_ids(tokenizer, text, spec.max_tokens) for text in texts]))


def sequence_target(
    spec: ModalitySpec, prompts: Sequence[Sequence[int]], layout: WordPieceLayout = DEFAULT_LAYOUT
) -> Entry:
    """A sequence target whose input rows are ``prompts`` (ids, each holding at least one sentinel); the target
    block starts with ``[S_1]`` right after each prompt and runs to the end of the row."""
    if spec.is_image or spec.kind == "seq_emb":
        raise ValueError(f"modality {spec.name!r} is a {spec.kind}: only seq/seq_token targets are decoded as text")
    first = layout.sentinel_id(1)
    length = spec.num_positions()
    tensor = torch.full((len(prompts), length), PAD_ID, dtype=torch.long)
    is_input = torch.zeros(len(prompts), length, dtype=torch.bool)
    is_target = torch.zeros_like(is_input)
    for row, prompt in enumerate(prompts):
        prompt = list(prompt)
        if not any(_is_sentinel(token, layout) for token in prompt):
            raise ValueError(f"modality {spec.name!r}: prompt {prompt} has no sentinel to fill (end it with [S_1])")
        if len(prompt) > spec.max_tokens:
            raise ValueError(f"modality {spec.name!r}: prompt of {len(prompt)} tokens > max_tokens {spec.max_tokens}")
        tensor[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        tensor[row, len(prompt)] = first
        is_input[row, : len(prompt)] = True
        is_target[row, len(prompt) :] = True
    return _entry(tensor, is_input, is_target)


def text_prompt_target(
    spec: ModalitySpec, tokenizer: Tokenizer, texts: Sequence[str], layout: WordPieceLayout = DEFAULT_LAYOUT
) -> Entry:
    """A sequence target to complete from prompts like ``"a red [S_1]"`` (no ``[EOS]`` is added)."""
    sentinel = "[S_1]"
    for text in texts:
        if not text.rstrip().endswith(sentinel):
            raise ValueError(f"modality {spec.name!r}: a prompt must end with {sentinel}, got {text!r}")
    return sequence_target(spec, [tokenizer.encode(text).ids for text in texts], layout)


def empty_target(spec: ModalitySpec, batch_size: int, device: torch.device | str = "cpu") -> Entry:
    """A target with nothing known yet (see the module docstring); images only need their grid."""
    if spec.is_image:
        if spec.is_pixels:
            raise ValueError(f"modality {spec.name!r}: pixels cannot be generated; generate tok_ tokens")
        codes = torch.zeros(batch_size, spec.num_positions(), dtype=torch.long, device=device)
        return _entry(codes, torch.zeros_like(codes, dtype=torch.bool), torch.ones_like(codes, dtype=torch.bool))
    entry = sequence_target(spec, [[DEFAULT_LAYOUT.sentinel_id(1)]] * batch_size)
    return {key: value.to(device) for key, value in entry.items()}


def empty_conditioning(spec: ModalitySpec, entry: Entry) -> Entry:
    """``entry`` with its information removed, for the unconditional pass of classifier-free guidance: images give
    no input; sequences only ``[S_1]`` (as 4M); ``seq_emb`` only its first (zeroed) row."""
    is_input = torch.zeros_like(entry["is_input"])
    is_target = torch.zeros_like(entry["is_target"])
    if spec.is_image:
        return _entry(entry["tensor"], is_input, is_target)
    tensor = torch.zeros_like(entry["tensor"])
    is_input[:, 0] = True
    if spec.kind != "seq_emb":
        tensor[:, 0] = DEFAULT_LAYOUT.sentinel_id(1)
    return _entry(tensor, is_input, is_target)


def _is_sentinel(token: int, layout: WordPieceLayout) -> bool:
    return layout.sentinel_id(0) <= token < layout.sentinel_id(0) + layout.num_sentinels


def closing_sentinel(input_ids: Sequence[int], layout: WordPieceLayout = DEFAULT_LAYOUT) -> int:
    """The sentinel that ends the generated spans of an input holding sentinels ``[S_1] .. [S_c]``: ``[S_{c+1}]``."""
    count = sum(_is_sentinel(token, layout) for token in input_ids)
    if count == 0:
        raise ValueError(f"sequence input {list(input_ids)} has no sentinel, so there is no span to generate")
    return layout.sentinel_id(count + 1)


def merge_spans(
    input_ids: Sequence[int], generated: Sequence[int], layout: WordPieceLayout = DEFAULT_LAYOUT
) -> list[int]:
    """Replace each sentinel of ``input_ids`` by its span in ``generated`` (``[S_1] a b [S_2] c ...``); a sentinel
    without a generated span is dropped. ``[a, S_1, d]`` + ``[S_1, b, c, S_2]`` → ``[a, b, c, d]``."""
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for token in generated:
        if _is_sentinel(token, layout):
            current = spans.setdefault(token, [])
        elif current is not None:
            current.append(token)
    merged: list[int] = []
    for token in input_ids:
        if _is_sentinel(token, layout):
            merged.extend(spans.get(token, []))
        else:
            merged.append(token)
    return merged


def strip_after_closing(generated: Sequence[int], closing: int) -> list[int]:
    """``generated`` up to and including the first ``closing`` token (all of it when there is none)."""
    generated = list(generated)
    return generated[: generated.index(closing) + 1] if closing in generated else generated


def merged_sequence_input(
    spec: ModalitySpec, entry: Entry, generated: Tensor, layout: WordPieceLayout = DEFAULT_LAYOUT
) -> Entry:
    """The target ``entry`` with each row's ``generated`` spans (``[B, K]`` ids from the opening sentinel on)
    spliced into its input; the merged rows (cut at ``max_tokens``) become a full input."""
    rows = []
    for row in range(generated.shape[0]):
        input_ids = entry["tensor"][row][entry["is_input"][row]].tolist()
        spans = strip_after_closing(generated[row].tolist(), closing_sentinel(input_ids, layout))
        rows.append(merge_spans(input_ids, spans, layout)[: spec.max_tokens])
    width = max(1, max(len(ids) for ids in rows))
    padded = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(rows):
        padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return full_input(spec, padded.to(entry["tensor"].device))


def row_inputs(entry: Entry) -> list[list[int]]:
    """Each row's input token ids (a sequence in order, or an image's codes)."""
    return [row[selected].tolist() for row, selected in zip(entry["tensor"], entry["is_input"], strict=True)]


def batch_size_of(batch: Mapping[str, Entry]) -> int:
    """The common batch size of every entry, or a ValueError naming the odd one."""
    sizes = {name: entry["tensor"].shape[0] for name, entry in batch.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"generation batch entries must share one batch size, got {sizes}")
    return next(iter(sizes.values()))


def generation_batch(
    modalities: Mapping[str, ModalitySpec],
    conditioning: Mapping[str, Entry],
    targets: Sequence[str],
    batch_size: int,
    device: torch.device | str = "cpu",
    cond_domains: Sequence[str] = (),
) -> Batch:
    """``conditioning`` entries plus an empty target for every name of ``targets`` not already in it (a prompt
    target may be); every ``cond_domains`` modality must have an entry."""
    missing = [name for name in cond_domains if name not in conditioning]
    if missing:
        raise ValueError(f"no input given for the conditioning modalities {missing}")
    unknown = [name for name in [*conditioning, *targets] if name not in modalities]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; the model has {list(modalities)}")
    batch = {name: {key: value.to(device) for key, value in entry.items()} for name, entry in conditioning.items()}
    for name in targets:
        if name not in batch:
            batch[name] = empty_target(modalities[name], batch_size, device)
    batch_size_of(batch)
    return batch
