"""Evaluators of a model with image and text embeddings (CLIP-like): zero-shot classification and image<->text
retrieval.

The model protocol is data_dict keys: given ``{image_key: float [B, 3, H, W]}`` the model (or its ``image_part``, one
model of a :class:`~polymodal.models.meta.ModelSeries`) writes ``image_embed_key`` ``[B, D]``; given ``{text_key:
int64 [B, L]}`` (and, with a ``text_mask_key``, a bool ``[B, L]`` mask of the real tokens) the model (or its
``text_part``) writes ``text_embed_key`` ``[B, D]``. Embeddings are L2-normalised here, so the model may write them
raw. Token ids are right-padded with ``pad_id`` to ``context_length``. With a ``text_eot_key`` the texts are encoded
as the multimodal data encodes captions (start token, text, end token, the tokenizer's padding: a text tower
trained on ``caption_ids`` sees the same layout) and the end token's position ``[B]`` goes under that key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from polymodal.train.evaluators.context import EvalContext
from polymodal.train.evaluators.data import IMAGE, ImageSplit, TextEncoder, as_split
from polymodal.train.evaluators.features import embed_images, embed_texts, image_features

DEFAULT_TEMPLATES = ("a photo of {}.",)


class _ImageText:
    """What both evaluators share: the data, the text encoder and the model protocol's keys and parts."""

    def __init__(
        self,
        data: ImageSplit | Mapping[str, Any],
        tokenizer: Any,
        context_length: int,
        pad_id: int,
        image_key: str,
        text_key: str,
        text_mask_key: str | None,
        text_eot_key: str | None,
        image_embed_key: str,
        text_embed_key: str,
        image_part: str | None,
        text_part: str | None,
        batch_size: int,
    ) -> None:
        self.data = as_split(data, "data")
        self.encoder = TextEncoder(tokenizer, context_length, pad_id, caption_layout=text_eot_key is not None)
        self.image_key, self.text_key, self.text_mask_key = image_key, text_key, text_mask_key
        self.text_eot_key = text_eot_key
        self.image_embed_key, self.text_embed_key = image_embed_key, text_embed_key
        self.image_part, self.text_part = image_part, text_part
        self.batch_size = batch_size

    def image_embeddings(self, context: EvalContext) -> dict[str, torch.Tensor]:
        values = image_features(
            context, self.data, self.image_embed_key, self.image_part, self.image_key, "none", self.batch_size
        )
        return {**values, "features": F.normalize(values["features"], dim=-1)}

    def text_embeddings(self, context: EvalContext, texts: list[str]) -> torch.Tensor:
        """Normalised ``[len(texts), D]``, the same on every rank."""

        def compute(indices: list[int]) -> dict[str, torch.Tensor]:
            return {"text": self._embed_texts(context, [texts[index] for index in indices])}

        return F.normalize(context.map_items(len(texts), self.batch_size, compute)["text"], dim=-1)

    def _embed_texts(self, context: EvalContext, texts: list[str]) -> torch.Tensor:
        return embed_texts(
            context, texts, self.encoder, self.text_embed_key, self.text_part, self.text_key, self.text_mask_key,
            self.text_eot_key,
        )  # fmt: skip


class ZeroShotClassification(_ImageText):
    """Top-1 accuracy of the class whose prompt embedding is closest to the image embedding.

    Each class name is written into every template (``"a photo of {}."``); a class's text embedding is the mean of
    its normalised prompt embeddings, normalised again. ``class_names`` default to the ImageFolder's classes.
    """

    def __init__(
        self,
        data: ImageSplit | Mapping[str, Any],
        tokenizer: Any,
        class_names: Sequence[str] | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        context_length: int = 32,
        pad_id: int = 0,
        image_key: str = IMAGE,
        text_key: str = "text_ids",
        text_mask_key: str | None = None,
        text_eot_key: str | None = None,
        image_embed_key: str = "image_embeds",
        text_embed_key: str = "text_embeds",
        image_part: str | None = None,
        text_part: str | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__(
            data, tokenizer, context_length, pad_id, image_key, text_key, text_mask_key, text_eot_key,
            image_embed_key, text_embed_key, image_part, text_part, batch_size,
        )  # fmt: skip
        names = list(class_names) if class_names is not None else self.data.class_names
        if not names:
            raise ValueError("zero-shot classification needs class_names (only an ImageFolder split names its classes)")
        if not templates or not all("{}" in template for template in templates):
            raise ValueError(f"templates must be non-empty and each contain '{{}}', got {list(templates)}")
        if self.data.label_key is None:
            raise ValueError("zero-shot classification needs labels: give the data a label_key")
        self.class_names, self.templates = names, list(templates)

    def class_embeddings(self, context: EvalContext) -> torch.Tensor:
        """``[classes, D]``: per class, the normalised mean of its normalised prompt embeddings."""
        prompts = [template.format(name) for name in self.class_names for template in self.templates]
        embeddings = self.text_embeddings(context, prompts).view(len(self.class_names), len(self.templates), -1)
        return F.normalize(embeddings.mean(dim=1), dim=-1)

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        images = self.image_embeddings(context)
        predictions = (images["features"] @ self.class_embeddings(context).T).argmax(dim=-1)
        labels = images["label"]
        # The best any constant answer scores: the most frequent class's share (at least chance, 1 / classes).
        baseline = float(torch.bincount(labels).max()) / len(labels)
        return {"top1": float((predictions == labels).float().mean()), "baseline_top1": baseline}


def recall_at(similarity: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@k of the diagonal pairs of a ``[queries, candidates]`` similarity: a query's rank is the number of
    candidates scored strictly higher than its own pair (ties count in the query's favour)."""
    own = similarity.diagonal().unsqueeze(1)
    ranks = (similarity > own).sum(dim=1)
    return {k: float((ranks < k).float().mean()) for k in ks}


class Retrieval(_ImageText):
    """Image->text and text->image Recall@1 and @5 over the data's (image, caption) pairs."""

    KS = (1, 5)

    def __init__(
        self,
        data: ImageSplit | Mapping[str, Any],
        tokenizer: Any,
        context_length: int = 32,
        pad_id: int = 0,
        image_key: str = IMAGE,
        text_key: str = "text_ids",
        text_mask_key: str | None = None,
        text_eot_key: str | None = None,
        image_embed_key: str = "image_embeds",
        text_embed_key: str = "text_embeds",
        image_part: str | None = None,
        text_part: str | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__(
            data, tokenizer, context_length, pad_id, image_key, text_key, text_mask_key, text_eot_key,
            image_embed_key, text_embed_key, image_part, text_part, batch_size,
        )  # fmt: skip
        if self.data.caption_key is None:
            raise ValueError("retrieval needs captions: give the data a caption_key")

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        def compute(indices: list[int]) -> dict[str, torch.Tensor]:
            batch = self.data.load(indices)
            images = embed_images(context, batch[IMAGE], self.image_embed_key, self.image_part, self.image_key, "none")
            return {"image": images, "text": self._embed_texts(context, batch["caption"])}

        pairs = context.map_items(len(self.data), self.batch_size, compute)
        similarity = F.normalize(pairs["image"], dim=-1) @ F.normalize(pairs["text"], dim=-1).T
        metrics = {}
        for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
            for k, recall in recall_at(scores, self.KS).items():
                metrics[f"{direction}_R@{k}"] = recall
                metrics[f"baseline_{direction}_R@{k}"] = min(k / len(scores), 1.0)  # a random ranking's recall
        return metrics
