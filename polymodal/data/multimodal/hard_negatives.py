"""Hard negative captions for contrastive training (NegCLIP, Yuksekgonul et al. 2023, "When and why vision-language
models behave like bags-of-words"): each caption again with one word swapped for another of its group ("a red
cube" -> "a red cone"), so that an image must tell its caption from a near-identical one and the towers learn
the attribute that tells them apart.

:class:`SwappedWordNegatives` is a ``batch_transform`` of
:class:`~polymodal.data.multimodal.data_module.MultimodalData`: it draws from the generator the loader seeds by the
batch's position, so the negatives differ between ranks and are the same for any worker count and after a resume
(as the other batch transforms, :mod:`polymodal.data.multimodal.prefix`).
:class:`~polymodal.objectives.contrastive.CLIPContrastiveLoss` with ``hard_negative_key`` scores them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from polymodal.data.multimodal.collate import Batch
from polymodal.tokenizers.text.bpe import load_tokenizer

HARD_NEGATIVE_KEY = "hard_negative_valid"


def word_token_groups(tokenizer_path: str, groups: Sequence[Sequence[str]]) -> list[list[int]]:
    """The token ids of each group's words, as a caption's first word and after a space (byte-level BPE encodes the
    two differently: each form whose every word is one token of its own makes a group of ids). A group with no
    such form is an error (an unknown word, or one split into pieces)."""
    tokenizer = load_tokenizer(tokenizer_path)

    def token_of(text: str) -> int | None:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        return ids[0] if len(ids) == 1 and tokenizer.decode(ids).strip() == text.strip() else None

    id_groups: list[list[int]] = []
    for group in groups:
        if len(group) < 2 or len(set(group)) != len(group):
            raise ValueError(f"a group of swappable words needs at least two distinct words, got {list(group)}")
        forms = [[token_of(prefix + word) for word in group] for prefix in ("", " ")]
        single = [form for form in forms if None not in form]
        if not single:
            split = [word for word, token in zip(group, forms[1], strict=True) if token is None]
            raise ValueError(f"the words {split} are not one token of {tokenizer_path}: a swap must keep the length")
        id_groups += [ids for index, ids in enumerate(single) if ids not in single[:index]]
    flat = [token for ids in id_groups for token in ids]
    if len(set(flat)) != len(flat):
        raise ValueError(f"the groups {[list(g) for g in groups]} share a token: a word must be in one group only")
    return id_groups


class SwappedWordNegatives:
    """Batch transform: one hard negative per caption, appended as rows ``B .. 2B - 1`` of ``ids_key``,
    ``eot_key`` and ``mask_key`` (the text tower then embeds both in one pass), and ``valid_key`` bool ``[B]``.

    Each negative is its caption with one word of ``groups`` (chosen uniformly among the caption's group words)
    replaced by another word of the same group (uniformly). A caption without any group word has no negative:
    its row repeats the caption and ``valid_key`` is False there, so the loss must not score it.

    Args:
        tokenizer: the caption tokenizer's JSON file (the data's ``caption_tokenizer``).
        groups: lists of interchangeable words, each one token, e.g. ``[[sphere, cube, cylinder, cone]]``.
    """

    def __init__(
        self,
        tokenizer: str,
        groups: Sequence[Sequence[str]],
        ids_key: str = "caption_ids",
        eot_key: str = "caption_eot",
        mask_key: str = "caption_mask",
        valid_key: str = HARD_NEGATIVE_KEY,
    ) -> None:
        id_groups = word_token_groups(tokenizer, groups)
        self.words = torch.tensor([token for ids in id_groups for token in ids])
        sizes = torch.tensor([len(ids) for ids in id_groups])
        starts = sizes.cumsum(0) - sizes
        self.group_size = sizes.repeat_interleave(sizes)  # per word: the size of its group
        self.group_start = starts.repeat_interleave(sizes)  # per word: its group's first index into self.words
        self.ids_key, self.eot_key, self.mask_key, self.valid_key = ids_key, eot_key, mask_key, valid_key

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        ids, mask = batch[self.ids_key], batch[self.mask_key]
        rows = torch.arange(ids.shape[0])
        is_word = torch.isin(ids, self.words) & mask
        valid = is_word.any(dim=1)
        uniforms = torch.rand(ids.shape, generator=generator)
        position = torch.where(is_word, uniforms, -1.0).argmax(dim=1)  # a uniform choice among the group words
        word = (ids[rows, position, None] == self.words).int().argmax(dim=1)  # index into self.words
        size, start = self.group_size[word], self.group_start[word]
        offset = 1 + (torch.rand(ids.shape[0], generator=generator) * (size - 1)).long().clamp_max(size - 2)
        replacement = self.words[start + (word - start + offset) % size]
        negatives = ids.clone()
        negatives[rows[valid], position[valid]] = replacement[valid]
        return {
            **batch,
            self.ids_key: torch.cat([ids, negatives]),
            self.eot_key: torch.cat([batch[self.eot_key]] * 2),
            self.mask_key: torch.cat([mask] * 2),
            self.valid_key: valid,
        }
