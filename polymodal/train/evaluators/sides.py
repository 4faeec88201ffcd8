"""The model protocol of the image-text evaluators, one settings section per side (``image:`` and ``text:`` in a
config): the data_dict keys the model reads and writes, the model part that embeds the side, and for texts how
they become token ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polymodal.train.evaluators.data import IMAGE, TextEncoder


@dataclass(frozen=True)
class ImageSide:
    """Given ``{key: float [B, 3, H, W]}`` the model (or its ``part``, one model of a
    :class:`~polymodal.models.meta.ModelSeries`) writes ``embed_key`` ``[B, D]``."""

    key: str = IMAGE
    embed_key: str = "image_embeds"
    part: str | None = None


@dataclass(frozen=True)
class TextSide:
    """Given ``{key: int64 [B, L]}`` (and, with a ``mask_key``, a bool ``[B, L]`` mask of the real tokens) the model
    (or its ``part``) writes ``embed_key`` ``[B, D]``.

    Texts are tokenized by ``tokenizer`` (a ``tokenizers`` JSON file or object) and right-padded with ``pad_id`` to
    ``context_length``. With an ``eot_key`` they are encoded as the multimodal data encodes captions (start token,
    text, end token, the tokenizer's padding: a text tower trained on ``caption_ids`` sees the same layout) and the
    end token's position ``[B]`` goes under that key.
    """

    tokenizer: Any
    context_length: int = 32
    pad_id: int = 0
    key: str = "text_ids"
    mask_key: str | None = None
    eot_key: str | None = None
    embed_key: str = "text_embeds"
    part: str | None = None

    def encoder(self) -> TextEncoder:
        return TextEncoder(self.tokenizer, self.context_length, self.pad_id, caption_layout=self.eot_key is not None)
