"""Shared inputs of the Lumina tests (importable from any test; the fixture is re-exported by
tests/families/lumina/conftest.py): a synthetic conversation corpus with bad items, a BPE trained on it and an
untrained tiny rgb image tokenizer (pre-tokenization only needs valid codes), and pre-tokenization settings for
them."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_image_tokenizers import export_tiny_tokenizer

from polymodal.data.synth.conversations import write_conversations
from polymodal.families.lumina.pretokenize import Settings
from polymodal.tokenizers.text.bpe import save_tokenizer, train_bpe

TEXT_VOCAB = 800
CODEBOOK = 64


def corpus_texts(conversations: Path) -> list[str]:
    """Every turn text of the good-enough items (what a tokenizer for this corpus is trained on)."""
    items = json.loads(conversations.read_text())
    return [
        turn["value"].encode("utf-8", "ignore").decode()
        for item in items
        if isinstance(item, dict) and isinstance(item.get("conversations"), list)
        for turn in item["conversations"]
        if isinstance(turn, dict) and isinstance(turn.get("value"), str)
    ]


@pytest.fixture(scope="session")
def lumina_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lumina_inputs")
    conversations = write_conversations(root / "corpus", 24, seed=5, size=64, bad_fraction=0.3)
    text = save_tokenizer(train_bpe(corpus_texts(conversations) * 3, TEXT_VOCAB), root / "bpe.json")
    image = export_tiny_tokenizer(root / "rgb_tokenizer", "rgb", CODEBOOK)
    return {"conversations": conversations, "text": text, "image": image, "bad_items": root / "corpus/bad_items.json"}


def settings_for(inputs: dict[str, Path], out_dir: Path, **changes) -> Settings:
    """Pre-tokenization settings of the ``lumina_inputs`` into ``out_dir`` (rank 0 of 2 splits), with ``changes``."""
    base = Settings(
        in_filename=inputs["conversations"],
        out_dir=out_dir,
        splits=2,
        rank=0,
        target_size=64,
        text_tokenizer=inputs["text"],
        image_tokenizer=inputs["image"],
        text_vocab_size=TEXT_VOCAB,
        chunk_size=8,
        batch_size=4,
    )
    return replace(base, **changes)
