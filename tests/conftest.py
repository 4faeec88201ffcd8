"""A tiny LLM experiment on a generated text corpus, as a config file the tests can override; a one-thread fixture
for tests of tiny models; the tiny rgb tokenizer trained once a session for the slow tests that need one."""

import json
import logging
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


@pytest.fixture(autouse=True)
def own_log_handlers():
    """The ``polymodal`` logger as it was before each test: a run started in-process adds a console handler on the
    test's captured stdout, which is closed once that test ends and must not receive a later test's records."""
    logger = logging.getLogger("polymodal")
    handlers, level = list(logger.handlers), logger.level
    yield
    for handler in [h for h in logger.handlers if h not in handlers]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level)


@pytest.fixture
def single_thread():
    """One intra-op torch thread for the test, restored after: tiny models on the shared CPU run 10-100x faster
    than with threads that oversubscribe it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_compiler(tmp_path, monkeypatch, single_thread):
    """torch.compile from scratch for the test (its own Inductor cache, dynamo state and counters reset), on one
    thread."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


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


RGB_TOKENIZER_RECIPE = """
defaults:
  - {repo}/configs/tokenizers/rgb_tiny.yaml
constants:
  data_root: {root}
  image_size: 64
data:
  cache_dir: {root}/cache
experiment:
  output_dir: {out}
  total_steps: 600
  log_every: 50
  eval_every: 100000
  ckpt_every: 600
  tensorboard: false
  wandb: {{enabled: false}}
"""


@pytest.fixture(scope="session")
def trained_rgb_tokenizer(tmp_path_factory) -> Path:
    """The run directory of configs/tokenizers/rgb_tiny.yaml trained for its 600 steps on 400 scenes (about 2.5
    minutes on 2 CPU cores): for the slow tests that need a tokenizer that really reconstructs."""
    from polymodal.config import load_config
    from polymodal.data.synth.writers import write_shards
    from polymodal.train.trainer import Trainer

    base = tmp_path_factory.mktemp("rgb_tokenizer")
    write_shards(base / "scenes", num_samples=400, samples_per_shard=100, seed=0, size=64, modalities=("rgb",))
    config = base / "rgb.yaml"
    config.write_text(RGB_TOKENIZER_RECIPE.format(repo=REPO, root=base / "scenes", out=base / "run"))
    Trainer(load_config(config)).fit()
    return base / "run"
