"""The one vocabulary of the autoregressive image–text family, and the layout of an image inside a token sequence.

Ids, decided once (docs/lumina.md, "The shared vocabulary"):

=============================  ============================================================================
ids                            what
=============================  ============================================================================
``0 .. 282``                   the BPE's special tokens (``polymodal.tokenizers.text.bpe.SPECIAL_TOKENS``):
                               pad, bos, eos, end of turn, ``<|image|>`` placeholder, begin/end of image,
                               end of row, ``<|h_1|> .. <|h_128|>``, ``<|w_1|> .. <|w_128|>``, 16 reserved
``283 .. text_vocab_size - 1`` byte symbols and learnt merges of the byte-level BPE
``text_vocab_size + c``        image code ``c`` of the image tokenizer, ``0 <= c < codebook_size``
=============================  ============================================================================

``vocab_size = text_vocab_size + codebook_size``. ``text_vocab_size`` is the size the BPE was *asked* for, not the
size it reached, so the image offset does not move when a corpus runs out of merges.

An image of ``h x w`` codes is the self-describing block::

    <|boi|> <|h_h|> <|w_w|>  row_0 (w codes) <|eor|>  ...  row_{h-1} <|eor|>  <|eoi|>

of ``4 + h * (w + 1)`` tokens. Size tokens count code rows and columns (1 .. 128: 2048 px at 16x downsampling),
so a block is read back without knowing the tokenizer's resolution.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from polymodal.tokenizers.text.bpe import MAX_IMAGE_SIDE_TOKENS, SPECIAL_TOKENS, check_special_token_ids

LAYOUT_NAME = "polymodal-bpe-specials+image-codes"


def _special(name: str) -> int:
    return SPECIAL_TOKENS.index(name)


@dataclass(frozen=True)
class VocabularyLayout:
    """Where every kind of token lives (see the module docstring). Two layouts are compatible iff equal."""

    text_vocab_size: int
    codebook_size: int
    name: str = LAYOUT_NAME
    pad: int = _special("<|pad|>")
    bos: int = _special("<|bos|>")
    end_of_turn: int = _special("<|eot|>")
    image_placeholder: int = _special("<|image|>")
    begin_image: int = _special("<|boi|>")
    end_image: int = _special("<|eoi|>")
    end_row: int = _special("<|eor|>")
    first_height: int = _special("<|h_1|>")
    first_width: int = _special("<|w_1|>")
    max_side: int = MAX_IMAGE_SIDE_TOKENS

    def __post_init__(self) -> None:
        if self.text_vocab_size < len(SPECIAL_TOKENS):
            raise ValueError(
                f"text_vocab_size {self.text_vocab_size} cannot hold the {len(SPECIAL_TOKENS)} special tokens"
            )
        if self.codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {self.codebook_size}")

    @property
    def image_offset(self) -> int:
        return self.text_vocab_size

    @property
    def vocab_size(self) -> int:
        return self.text_vocab_size + self.codebook_size

    @property
    def token_dtype(self) -> np.dtype:
        """uint16 when every id fits (vocabularies up to 65,536), else uint32."""
        return np.dtype(np.uint16) if self.vocab_size <= 1 << 16 else np.dtype(np.uint32)

    def height_token(self, rows: int) -> int:
        self._check_side(rows, "rows")
        return self.first_height + rows - 1

    def width_token(self, columns: int) -> int:
        self._check_side(columns, "columns")
        return self.first_width + columns - 1

    def _check_side(self, count: int, what: str) -> None:
        if not 1 <= count <= self.max_side:
            raise ValueError(f"an image of {count} code {what} has no size token (1 .. {self.max_side})")

    def is_image_code(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= self.image_offset) & (ids < self.vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image_offset": self.image_offset, "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VocabularyLayout:
        """The layout a manifest recorded; the derived entries must agree with the rest."""
        fields = {k: v for k, v in data.items() if k not in ("image_offset", "vocab_size")}
        try:
            layout = cls(**fields)
        except TypeError as error:
            raise ValueError(f"not a vocabulary layout: {error}") from error
        if layout.to_dict() != data:
            raise ValueError(f"inconsistent vocabulary layout {data}")
        return layout

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def describe_difference(self, other: VocabularyLayout) -> str:
        """``text_vocab_size 4096 != 8192, ...``: the entries two layouts disagree on."""
        mine, theirs = self.to_dict(), other.to_dict()
        return ", ".join(f"{key} {mine[key]} != {theirs[key]}" for key in mine if mine[key] != theirs.get(key))

    def check_text_tokenizer(self, tokenizer: Tokenizer, source: str) -> None:
        """The BPE must have the contractual special ids and fit below the image codes."""
        check_special_token_ids(tokenizer, source=source)
        if tokenizer.get_vocab_size() > self.text_vocab_size:
            raise ValueError(
                f"{source} has {tokenizer.get_vocab_size()} tokens, more than text_vocab_size "
                f"{self.text_vocab_size}: its ids would overlap the image codes"
            )


def image_block_length(rows: int, columns: int) -> int:
    return 4 + rows * (columns + 1)


def image_block(codes: np.ndarray, layout: VocabularyLayout) -> np.ndarray:
    """The token block of one image's codes ``[h, w]`` (int64 ids; see the module docstring)."""
    if codes.ndim != 2:
        raise ValueError(f"image codes must be [h, w], got shape {codes.shape}")
    rows, columns = codes.shape
    if codes.size and (codes.min() < 0 or codes.max() >= layout.codebook_size):
        raise ValueError(f"image codes must be in [0, {layout.codebook_size}), got [{codes.min()}, {codes.max()}]")
    grid = np.empty((rows, columns + 1), dtype=np.int64)
    grid[:, :columns] = codes + layout.image_offset
    grid[:, columns] = layout.end_row
    head = [layout.begin_image, layout.height_token(rows), layout.width_token(columns)]
    return np.concatenate([np.array(head, dtype=np.int64), grid.reshape(-1), [layout.end_image]])


def parse_image_block(block: np.ndarray, layout: VocabularyLayout) -> np.ndarray:
    """Codes ``[h, w]`` of a complete image block (the inverse of :func:`image_block`); ValueError says what is
    wrong with a malformed one."""
    block = np.asarray(block, dtype=np.int64)
    if len(block) < 4 or block[0] != layout.begin_image or block[-1] != layout.end_image:
        raise ValueError("an image block starts with <|boi|> and ends with <|eoi|>")
    rows, columns = block[1] - layout.first_height + 1, block[2] - layout.first_width + 1
    if not (1 <= rows <= layout.max_side and 1 <= columns <= layout.max_side):
        raise ValueError(f"an image block's 2nd and 3rd tokens must be size tokens, got ids {block[1]}, {block[2]}")
    if len(block) != image_block_length(rows, columns):
        raise ValueError(
            f"an image block of {rows}x{columns} codes has {image_block_length(rows, columns)} tokens, got {len(block)}"
        )
    grid = block[3:-1].reshape(rows, columns + 1)
    if (grid[:, columns] != layout.end_row).any():
        raise ValueError("every row of an image block must end with <|eor|>")
    codes = grid[:, :columns]
    if not layout.is_image_code(codes).all():
        raise ValueError("an image block's rows may only hold image codes")
    return codes - layout.image_offset
