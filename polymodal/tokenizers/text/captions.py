"""Captions as fixed-length token ids for a text tower (CLIP-style): start token, the caption's tokens, end token,
padding.

A caption longer than ``max_tokens - 2`` tokens is truncated and still ends with the end token (CLIP pools the
text at that position). Any tokenizer JSON this library trains works: the byte-level BPE (``<|pad|>``, ``<|bos|>``,
``<|eos|>``) and 4M's WordPiece (``[PAD]``, ``[SOS]``, ``[EOS]``); their special ids are looked up by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from polymodal.tokenizers.text.bpe import load_tokenizer

# (pad, start, end) special tokens of the layouts this library trains: byte-level BPE, 4M WordPiece.
SEQUENCE_SPECIALS = (("<|pad|>", "<|bos|>", "<|eos|>"), ("[PAD]", "[SOS]", "[EOS]"))


def sequence_special_ids(tokenizer: Tokenizer, source: str = "tokenizer") -> tuple[int, int, int]:
    """The (pad, start, end) ids of ``tokenizer``, from the first layout of :data:`SEQUENCE_SPECIALS` it has."""
    for names in SEQUENCE_SPECIALS:
        ids = [tokenizer.token_to_id(name) for name in names]
        if None not in ids:
            pad, start, end = ids
            return pad, start, end
    raise ValueError(f"{source} has none of the special token sets {[list(n) for n in SEQUENCE_SPECIALS]}")


class CaptionEncoder:
    """Texts -> ``ids`` int64 [B, max_tokens], ``mask`` bool [B, max_tokens] (True on the start, text and end tokens)
    and ``eot`` int64 [B] (the end token's position). A ``None`` caption (absent) is all padding, mask False, eot 0."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, source: str = "tokenizer") -> None:
        if max_tokens < 2:
            raise ValueError(f"caption max_tokens must be >= 2 (start and end tokens), got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_id, self.start_id, self.end_id = sequence_special_ids(tokenizer, source)

    @classmethod
    def from_file(cls, path: str | Path, max_tokens: int) -> CaptionEncoder:
        return cls(load_tokenizer(path), max_tokens, source=f"tokenizer {path}")

    def __call__(self, texts: Sequence[str | None]) -> dict[str, torch.Tensor]:
        ids = torch.full((len(texts), self.max_tokens), self.pad_id, dtype=torch.int64)
        eot = torch.zeros(len(texts), dtype=torch.int64)
        for row, text in enumerate(texts):
            if text is None:
                continue
            # One encode per caption: encode_batch would start the Rust thread pool, which forked workers inherit.
            body = self.tokenizer.encode(text, add_special_tokens=False).ids[: self.max_tokens - 2]
            tokens = [self.start_id, *body, self.end_id]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
            eot[row] = len(tokens) - 1
        positions = torch.arange(self.max_tokens)
        mask = (positions <= eot[:, None]) & torch.tensor([text is not None for text in texts])[:, None]
        return {"ids": ids, "mask": mask, "eot": eot}
