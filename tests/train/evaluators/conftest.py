"""Small synthetic evaluation data shared by the evaluator tests: an ImageFolder tree and caption shards whose
sizes do not divide by two ranks, and a word tokenizer over their class names and captions."""

from pathlib import Path

import pytest
from tiny_clip import TEMPLATES, captions_of_shards, write_word_tokenizer

from polymodal.data.synth.scene import CLASS_NAMES
from polymodal.data.synth.writers import write_imagefolder, write_shards


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_data")
    write_imagefolder(root / "folder", num_samples=33, val_fraction=0.35, size=32)  # 22 train, 11 val
    write_shards(root / "shards", num_samples=13, samples_per_shard=5, size=32, modalities=("rgb", "label", "caption"))
    texts = [t.format(name) for name in CLASS_NAMES for t in TEMPLATES] + captions_of_shards(root / "shards")
    tokenizer = write_word_tokenizer(root / "tokenizer.json", texts)
    return {"folder": root / "folder", "shards": root / "shards", "tokenizer": tokenizer}
