"""Conversation items in Lumina-mGPT's input format → checked conversations → token ids and labels.

Input: a JSON list (read whole) or JSONL (streamed, one item per line) of::

    {"id": "optional", "conversations": [{"from": "human", "value": "... <|image|> ..."},
                                         {"from": "gpt", "value": "..."}, ...],
     "image": ["a.png", ...]}          # optional for text-only items; a single path is accepted too

Turns strictly alternate, starting with the human (``human``/``user``, then ``gpt``/``assistant``, any case).
Each ``<|image|>`` takes the next image of the list, so their counts must agree. Relative image paths are relative
to the input file's directory.

The sequence is ``<|bos|>`` then every turn's text and image blocks, each turn closed by ``<|eot|>`` (roles are
implied by alternation, as in Lumina-mGPT). Only assistant turns are trained: their text, their whole image blocks
(begin, size tokens, codes, row ends, end) and their ``<|eot|>``. Text that spells a special token (say ``<|eot|>``)
is encoded as plain characters, so an item cannot forge the structure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from polymodal.families.lumina.rejections import Rejected
from polymodal.families.lumina.shards import ItemError
from polymodal.families.lumina.vocabulary import VocabularyLayout

PLACEHOLDER = "<|image|>"
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


@dataclass(frozen=True)
class RawItem:
    """One entry of the input file: its 0-based position and the parsed JSON (or why it could not be parsed)."""

    index: int
    value: Any = None
    problem: Rejected | None = None


@dataclass(frozen=True)
class Conversation:
    """A checked item: turn texts (human first, alternating) and the resolved image paths in placeholder order."""

    index: int
    item_id: str
    turns: tuple[str, ...]
    images: tuple[Path, ...]

    def error(self, rejected: Rejected) -> ItemError:
        return ItemError(self.index, self.item_id, rejected.reason, rejected.detail)


def read_items(path: str | Path) -> Iterator[RawItem]:
    """Items of a ``.jsonl`` file (streamed; a bad line becomes a rejected item) or of a JSON list file."""
    source = Path(path)
    if source.suffix == ".jsonl":
        with open(source, "rb") as handle:
            for index, line in enumerate(handle):
                yield _parse_line(index, line)
        return
    try:
        items = json.loads(source.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{source} is not a UTF-8 JSON file ({error}); use JSONL to skip bad lines") from error
    if not isinstance(items, list):
        raise ValueError(f"{source} must hold a JSON list of items, got {type(items).__name__}")
    for index, value in enumerate(items):
        yield RawItem(index, value)


def conversation_texts(path: str | Path) -> Iterator[str]:
    """The text of every turn of every item that passes :func:`check_item` (placeholders removed): the corpus a
    text tokenizer for these conversations learns from. Image files are not opened."""
    for raw in read_items(path):
        try:
            conversation = check_item(raw, Path(path).parent)
        except Rejected:
            continue
        yield from (piece for turn in conversation.turns for piece in turn.split(PLACEHOLDER) if piece)


def _parse_line(index: int, line: bytes) -> RawItem:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return RawItem(index, problem=Rejected("non_utf8", f"line {index + 1}: {error}"))
    try:
        return RawItem(index, json.loads(text))
    except json.JSONDecodeError as error:
        return RawItem(index, problem=Rejected("malformed_item", f"line {index + 1} is not JSON: {error}"))


def item_id(raw: RawItem) -> str:
    """The item's ``id`` when it has a usable one, else its position."""
    value = raw.value.get("id") if isinstance(raw.value, dict) else None
    return value if isinstance(value, str) and _is_utf8(value) else str(raw.index)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_item(raw: RawItem, base_dir: Path) -> Conversation:
    """The checked conversation of ``raw``, or :class:`Rejected` saying what is wrong (no file is opened)."""
    if raw.problem is not None:
        raise raw.problem
    item = raw.value
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        raise Rejected("malformed_item", 'an item must be an object with a "conversations" list')
    turns = item["conversations"]
    if not turns:
        raise Rejected("empty_conversation", "no turns")
    texts = []
    for position, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            raise Rejected("malformed_item", f'turn {position} is not {{"from": str, "value": str}}')
        expected = HUMAN_ROLES if position % 2 == 0 else ASSISTANT_ROLES
        if turn["from"].lower() not in expected:
            raise Rejected("role_order", f"turn {position} is from {turn['from']!r}, expected {expected[0]!r}")
        if not _is_utf8(turn["value"]):
            raise Rejected("non_utf8", f"turn {position} holds text that is not valid Unicode")
        texts.append(turn["value"])
    images = item.get("image", [])
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) and _is_utf8(p) for p in images):
        raise Rejected("malformed_item", '"image" must be a path or a list of paths')
    placeholders = sum(text.count(PLACEHOLDER) for text in texts)
    if placeholders != len(images):
        raise Rejected("placeholder_mismatch", f"{placeholders} {PLACEHOLDER} placeholders, {len(images)} images")
    if len(texts) < 2:
        raise Rejected("no_target", "no assistant turn to train on")
    return Conversation(raw.index, item_id(raw), tuple(texts), tuple(base_dir / p for p in images))


@dataclass(frozen=True)
class Segment:
    """A stretch of the sequence: text ids, or the image with this number in the conversation; trained or not."""

    trained: bool
    text_ids: np.ndarray | None = None
    image: int | None = None


def plan_segments(conversation: Conversation, tokenizer: Tokenizer) -> list[Segment]:
    """The conversation's sequence as segments; image blocks are filled in once the images are encoded.

    ``tokenizer.encode_special_tokens`` must be True (see :func:`plain_text_tokenizer`)."""
    pieces, owners = [], []
    for turn, text in enumerate(conversation.turns):
        for k, piece in enumerate(text.split(PLACEHOLDER)):
            if k:
                owners.append((turn, "image"))
            if piece:
                pieces.append(piece)
                owners.append((turn, "text"))
        owners.append((turn, "end"))
    encoded = iter(tokenizer.encode_batch(pieces, add_special_tokens=False))
    segments, image = [], 0
    for turn, kind in owners:
        trained = turn % 2 == 1
        if kind == "text":
            segments.append(Segment(trained, text_ids=np.asarray(next(encoded).ids, dtype=np.int64)))
        elif kind == "image":
            segments.append(Segment(trained, image=image))
            image += 1
        else:
            segments.append(Segment(trained, text_ids=None))
    return segments


def plain_text_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` set to encode the text of special tokens as plain characters (items cannot forge them)."""
    tokenizer.encode_special_tokens = True
    return tokenizer


def sequence_length(segments: list[Segment], image_lengths: list[int]) -> int:
    """Tokens of the whole sequence, ``<|bos|>`` included, given each image block's length."""
    text = sum(len(s.text_ids) if s.text_ids is not None else 1 for s in segments if s.image is None)
    return 1 + text + sum(image_lengths[s.image] for s in segments if s.image is not None)


def assemble(
    segments: list[Segment], image_blocks: list[np.ndarray], layout: VocabularyLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and label mask of the whole sequence (a segment without text or image is a turn's ``<|eot|>``)."""
    parts, labels = [np.array([layout.bos], dtype=np.int64)], [np.zeros(1, dtype=bool)]
    for segment in segments:
        if segment.image is not None:
            ids = image_blocks[segment.image]
        elif segment.text_ids is not None:
            ids = segment.text_ids
        else:
            ids = np.array([layout.end_of_turn], dtype=np.int64)
        parts.append(ids)
        labels.append(np.full(len(ids), segment.trained))
    return np.concatenate(parts), np.concatenate(labels)
