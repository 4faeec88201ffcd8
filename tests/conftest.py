"""A tiny LLM experiment on a generated text corpus, as a config file the tests can override; a one-thread fixture
for tests of tiny models."""

import json
import os
import random
from pathlib import Path

import pytest
import torch

from polymodal.files import CACHE_DIR_ENV

REPO = Path(__file__).resolve().parents[1]

COLOURS = ["red", "blue", "green", "yellow", "purple", "grey"]
SHAPES = ["cube", "sphere", "cone", "cylinder"]
RELATIONS = ["left of", "right of", "behind", "in front of", "above"]


def write_corpus(path: Path, documents: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(documents):
            sentences = [
                f"the {rng.choice(COLOURS)} {rng.choice(SHAPES)} is {rng.choice(RELATIONS)} "
                f"the {rng.choice(COLOURS)} {rng.choice(SHAPES)}."
                for _ in range(rng.randint(2, 6))
            ]
            out.write(json.dumps({"text": " ".join(sentences)}) + "\n")
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every cache of the library (``polymodal.files.cache_root``) in a folder of this test session, never the
    user's: subprocesses inherit it through the environment."""
    previous = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(tmp_path_factory.mktemp("polymodal-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = previous


@pytest.fixture
def single_thread():
    """One intra-op torch thread for the test, restored after: tiny models on the shared CPU run 10-100x faster
    than with threads that oversubscribe it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "scenes.jsonl")


def write_tiny_config(directory: Path, corpus: Path) -> Path:
    """configs/llm/model.yaml + configs/optim/adamw_cosine.yaml at a tiny size, reading ``corpus``."""
    config = directory / "tiny.yaml"
    config.write_text(
        f"""
defaults:
  - {REPO}/configs/llm/model.yaml
  - {REPO}/configs/optim/adamw_cosine.yaml
constants:
  vocab_size: 800
  seq_len: 32
  batch_size: 4
  dim: 32
  depth: 2
  num_heads: 4
  num_kv_heads: 2
  multiple_of: 16
  tie_embeddings: true
  lr: 3.0e-3
  warmup_steps: 2
data:
  _target_: polymodal.data.text.lm_data.LMData
  source: files
  paths: [{corpus}]
  tokenizer_path: {directory}/cache/tokenizer.json
  cache_dir: {directory}/cache
  vocab_size: ${{constants.vocab_size}}
  seq_len: ${{constants.seq_len}}
  batch_size: ${{constants.batch_size}}
experiment:
  output_dir: {directory}/run
  total_steps: 8
  log_every: 1
  eval_every: 4
  eval_steps: 2
  ckpt_every: 4
  peak_flops: 1.0e11
  tensorboard: false
  wandb:
    enabled: false
"""
    )
    return config


@pytest.fixture(scope="session")
def tiny_config_writer():
    """``write_tiny_config`` for module-scoped fixtures (conftest modules are not importable from tests)."""
    return write_tiny_config


@pytest.fixture
def tiny_config(tmp_path, text_corpus, monkeypatch) -> Path:
    """A tiny LLM experiment in ``tmp_path`` (outputs in ``tmp_path/run``)."""
    monkeypatch.setenv("POLYMODAL_CACHE_DIR", str(tmp_path / "cache"))
    return write_tiny_config(tmp_path, text_corpus)
