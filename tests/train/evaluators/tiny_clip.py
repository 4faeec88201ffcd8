"""A tiny CLIP-like model built from the library's parts, speaking the evaluators' protocol: ``rgb`` -> ``tokens``
[B, T, D], ``features`` [B, D] and ``image_embeds``; ``text_ids`` -> ``text_embeds``. A ModelSeries of an ``image``
and a ``text`` tower, so each runs alone (``part``); the image trunk's TransformerBlock is an FSDP unit."""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn

from polymodal.models.layers.block import build_transformer
from polymodal.models.layers.patch_embed import PatchEmbed
from polymodal.models.meta import MetaModel, ModelSeries, ModuleBlock
from polymodal.models.parts import TransformerTrunk

DIM, EMBED, VOCAB = 16, 8, 64
TEMPLATES = ["a photo of {}.", "a rendering of {}."]


class MeanTokens(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


def tiny_clip(seed: int = 0) -> ModelSeries:
    torch.manual_seed(seed)
    transformer = build_transformer(DIM, depth=1, num_heads=2, multiple_of=16, rope=None)
    image = MetaModel(
        preprocessor=ModuleBlock(PatchEmbed(8, 3, DIM), "rgb", "hidden"),
        trunk=TransformerTrunk(transformer, "hidden", "tokens", mask_key=None, position_key=None, cache_key=None),
        postprocessor=ModuleBlock(MeanTokens(), "tokens", "features"),
        head=ModuleBlock(nn.Linear(DIM, EMBED), "features", "image_embeds"),
    )
    text = MetaModel(
        preprocessor=ModuleBlock(nn.Embedding(VOCAB, DIM), "text_ids", "text_hidden"),
        postprocessor=ModuleBlock(MeanTokens(), "text_hidden", "text_features"),
        head=ModuleBlock(nn.Linear(DIM, EMBED), "text_features", "text_embeds"),
    )
    return ModelSeries({"image": image, "text": text})


def write_word_tokenizer(path: Path, texts: list[str]) -> Path:
    """A word-level tokenizer over the words of ``texts`` (id 0 is padding, 1 unknown), saved as JSON."""
    words = sorted({word for text in texts for word in text.replace(".", " ").replace(",", " ").split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{word: index + 2 for index, word in enumerate(words[: VOCAB - 2])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def captions_of_shards(root: Path) -> list[str]:
    """Every caption string of the shards under ``root/caption`` (for the tokenizer's vocabulary)."""
    import tarfile

    captions = []
    for shard in sorted((root / "caption").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                captions += json.loads(tar.extractfile(member).read())
    return captions


def evaluators_of(data: dict[str, Path]) -> dict:
    """All four evaluators on the tiny CLIP's keys (small sweeps: the tests compare numbers, not quality)."""
    from polymodal.train.evaluators import AttentiveProbe, LinearProbe, Retrieval, ZeroShotClassification

    folder = str(data["folder"])
    train = {"location": folder, "split": "train", "image_size": 32}
    val = {"location": folder, "split": "val", "image_size": 32}
    sweep = {"learning_rates": [1e-2, 1e-1], "weight_decays": [0.0], "epochs": 5, "batch_size": 8}
    shards = str(data["shards"]) + "/[rgb,label,caption]/shard-{00000..00002}.tar"
    captions = {"location": shards, "format": "shards", "image_size": 32, "caption_key": "caption"}
    tokenizer = str(data["tokenizer"])
    return {
        "linear": LinearProbe(train, val, feature_key="features", part="image", sweep=sweep, extract_batch_size=4),
        "attentive": AttentiveProbe(train, val, feature_key="tokens", part="image", sweep=sweep, num_heads=2),
        "zero_shot": ZeroShotClassification(
            val, {"tokenizer": tokenizer, "context_length": 8, "part": "text"}, {"part": "image"},
            templates=TEMPLATES, batch_size=4,
        ),
        "retrieval": Retrieval(
            captions, {"tokenizer": tokenizer, "context_length": 24, "part": "text"}, {"part": "image"}, batch_size=4
        ),
    }  # fmt: skip
