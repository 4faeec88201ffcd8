"""Deliberately bad conversation items, one fault each, to test how a reader reports what it skips.

The reason names are the pre-tokenizer's error reasons. A corpus lists its bad items in ``bad_items.json``: item id
-> reason, or 0-based position in the file (as a string) -> reason for an item a reader cannot take an id from.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

BAD_REASONS = (
    "placeholder_mismatch",  # the number of <|image|> placeholders differs from the number of images
    "role_order",  # the turns do not alternate human, gpt, ...: it starts with gpt or has two human turns in a row
    "missing_image",  # an image path names no file
    "unreadable_image",  # a truncated PNG
    "empty_conversation",  # "conversations": []
    "image_too_large",  # a tiny PNG whose header declares HUGE_SIDE x HUGE_SIDE pixels
    "non_utf8",  # JSONL: a byte that is not UTF-8 inside a string; JSON list: a lone surrogate escape "\udcff"
    "malformed_item",  # not an object, or "conversations" not a list; in JSONL also a line that is not JSON
)
_NEED_AN_IMAGE = frozenset(  # faults made through one of the item's images
    {"placeholder_mismatch", "missing_image", "unreadable_image", "image_too_large"}
)
HUGE_SIDE = 60_000
LONE_SURROGATE = "\udcff"  # what the "surrogateescape" error handler decodes the byte 0xff to
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Entry:
    """One entry of a corpus file: its JSON value and why it is bad (None: a good item).

    ``by_position``: readers cannot take an id from it, so ``bad_items.json`` names it by position; ``cut``: its
    JSONL line is the first half of its JSON text, so not JSON at all.
    """

    value: object
    reason: str | None = None
    by_position: bool = False
    cut: bool = False

    def jsonl_line(self) -> bytes:
        text = json.dumps(self.value, ensure_ascii=False)
        if self.cut:
            text = text[: len(text) // 2]
        # "surrogateescape" writes a lone surrogate (a non_utf8 item) as the raw byte it stands for: not UTF-8.
        return text.encode("utf-8", "surrogateescape") + b"\n"

    def report_key(self, position: int) -> str:
        return str(position) if self.by_position else self.value["id"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def oversized_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` RGB pixels: its image data is one
    filter byte and one pixel, so a reader must refuse it from the header (nothing here allocates the pixels)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, no filter, no interlace
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 4))
        + _png_chunk(b"IEND", b"")
    )


def spoil(item: dict, files: dict[str, bytes], jsonl: bool, rng: np.random.Generator) -> tuple[Entry, dict[str, bytes]]:
    """A copy of the good ``item`` with one fault of a reason ``rng`` picks, and the files that fault needs written
    (bytes by path relative to the corpus root). ``files`` holds the PNG bytes of the item's images by path."""
    item = copy.deepcopy(item)
    turns, images = item["conversations"], item.get("image", [])
    reason = str(rng.choice([r for r in BAD_REASONS if images or r not in _NEED_AN_IMAGE]))
    bad_path = f"images/{item['id']}.{reason}.png"
    written: dict[str, bytes] = {}
    if reason == "placeholder_mismatch":
        images.pop()
    elif reason == "role_order":
        if rng.random() < 0.5:
            turns[0]["from"] = "gpt"
        else:
            turns[1]["from"] = "human"
    elif reason == "missing_image":
        images[-1] = bad_path  # never written
    elif reason == "unreadable_image":
        good = files[images[-1]]
        images[-1], written[bad_path] = bad_path, good[: len(good) // 2]
    elif reason == "image_too_large":
        images[-1], written[bad_path] = bad_path, oversized_png(HUGE_SIDE, HUGE_SIDE)
    elif reason == "empty_conversation":
        item["conversations"], item["image"] = [], []
    elif reason == "non_utf8":
        turns[-1]["value"] += LONE_SURROGATE
        return Entry(item, reason, by_position=jsonl), written  # an undecodable JSONL line yields no id
    else:  # malformed_item
        return _malformed(item, jsonl, rng), written
    return Entry(item, reason), written


def _malformed(item: dict, jsonl: bool, rng: np.random.Generator) -> Entry:
    """The item's turns without the object around them, its first turn without the list around it, or (JSONL) half
    of its line."""
    variant = rng.integers(3 if jsonl else 2)
    if variant == 0:
        return Entry(item["conversations"], "malformed_item", by_position=True)
    if variant == 1:
        item["conversations"] = item["conversations"][0]
        return Entry(item, "malformed_item")
    return Entry(item, "malformed_item", by_position=True, cut=True)
