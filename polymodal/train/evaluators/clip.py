"""Evaluators of a model with image and text embeddings (CLIP-like): zero-shot classification and image<->text
retrieval.

The model protocol is data_dict keys, set per side: ``image`` (an :class:`~polymodal.train.evaluators.sides.ImageSide`
or its settings: the images' key, the embedding key, the model part) and ``text`` (a
:class:`~polymodal.train.evaluators.sides.TextSide` or its settings: the tokenizer and the token layout, the keys,
the model part). Embeddings are L2-normalised here, so the model may write them raw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from polymodal.config.arguments import settings_from
from polymodal.train.evaluators.context import SAMPLES, EvalContext
from polymodal.train.evaluators.data import IMAGE, ImageSplit
from polymodal.train.evaluators.features import embed_images, embed_texts, image_features
from polymodal.train.evaluators.sides import ImageSide, TextSide

DEFAULT_TEMPLATES = ("a photo of {}.",)


class _ImageText:
    """What both evaluators share: the data (an ImageSplit or its arguments), the text and image sides of the model
    protocol, and the batch size of the model's forwards."""

    def __init__(
        self,
        data: ImageSplit | Mapping[str, Any],
        text: TextSide | Mapping[str, Any],
        image: ImageSide | Mapping[str, Any] | None,
        batch_size: int,
    ) -> None:
        self.data = settings_from(ImageSplit, data, "data")
        self.text = settings_from(TextSide, text, "text")
        self.image = settings_from(ImageSide, image, "image")
        self.encoder = self.text.encoder()
        self.batch_size = batch_size

    def image_embeddings(self, context: EvalContext) -> dict[str, torch.Tensor]:
        image = self.image
        values = image_features(context, self.data, image.embed_key, image.part, image.key, "none", self.batch_size)
        return {**values, "features": F.normalize(values["features"], dim=-1)}

    def text_embeddings(self, context: EvalContext, texts: list[str]) -> torch.Tensor:
        """Normalised ``[len(texts), D]``, the same on every rank."""

        def compute(indices: list[int]) -> dict[str, torch.Tensor]:
            return {"text": embed_texts(context, [texts[index] for index in indices], self.encoder, self.text)}

        return F.normalize(context.map_items(len(texts), self.batch_size, compute)["text"], dim=-1)


class ZeroShotClassification(_ImageText):
    """Top-1 accuracy of the class whose prompt embedding is closest to the image embedding.

    Each class name is written into every template (``"a photo of {}."``); a class's text embedding is the mean of
    its normalised prompt embeddings, normalised again. ``class_names`` default to the ImageFolder's classes.
    """

    def __init__(
        self,
        data: ImageSplit | Mapping[str, Any],
        text: TextSide | Mapping[str, Any],
        image: ImageSide | Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        batch_size: int = 64,
    ) -> None:
        super().__init__(data, text, image, batch_size)
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
        top1 = float((predictions == labels).float().mean())
        return {"top1": top1, "baseline_top1": baseline, SAMPLES: float(len(labels))}


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
        text: TextSide | Mapping[str, Any],
        image: ImageSide | Mapping[str, Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__(data, text, image, batch_size)
        if self.data.caption_key is None:
            raise ValueError("retrieval needs captions: give the data a caption_key")

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        def compute(indices: list[int]) -> dict[str, torch.Tensor]:
            batch = self.data.load(indices)
            image = self.image
            images = embed_images(context, batch[IMAGE], image.embed_key, image.part, image.key, "none")
            return {"image": images, "text": embed_texts(context, batch["caption"], self.encoder, self.text)}

        pairs = context.map_items(len(self.data), self.batch_size, compute)
        similarity = F.normalize(pairs["image"], dim=-1) @ F.normalize(pairs["text"], dim=-1).T
        metrics = {SAMPLES: float(len(similarity))}
        for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
            for k, recall in recall_at(scores, self.KS).items():
                metrics[f"{direction}_R@{k}"] = recall
                metrics[f"baseline_{direction}_R@{k}"] = min(k / len(scores), 1.0)  # a random ranking's recall
        return metrics
