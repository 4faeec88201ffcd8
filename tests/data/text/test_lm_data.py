import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import polymodal.data.text.lm_data as lm_data_module
from polymodal.data.text.corpus import in_val_split
from polymodal.data.text.lm_data import LMData
from polymodal.data.text.tokens import unigram_entropy
from polymodal.tokenizers.text.bpe import EOS_ID, SPECIAL_TOKENS, tokenizer_fingerprint

VOCAB = 800


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def synthetic_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "tokens", "packing", "loader", "résumé", "🤗"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(10, 60))) + f" #{i}" for i in range(n)]


@pytest.fixture
def files_setup(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs(400, seed=0))
    return {
        "tokenizer_path": str(tmp_path / "tok" / "bpe.json"),
        "vocab_size": VOCAB,
        "seq_len": 32,
        "batch_size": 4,
        "source": "files",
        "paths": [str(data)],
        "val_fraction": 0.2,
        "cache_dir": str(tmp_path / "cache"),
    }


def test_files_source_end_to_end(files_setup):
    data = LMData(**files_setup)
    docs = synthetic_docs(400, seed=0)
    val_docs = [d for d in docs if in_val_split(d, 0.2)]
    assert 0 < len(val_docs) < len(docs)
    assert data.tokens_per_sample == 32 and data.vocab_size == VOCAB
    assert data.tokenizer.get_vocab_size() <= VOCAB
    assert int((data.val_corpus.tokens == EOS_ID).sum()) == len(val_docs)
    assert int((data.train_corpus.tokens == EOS_ID).sum()) == len(docs) - len(val_docs)
    first_val_doc = data.val_corpus.tokens[data.val_corpus.doc_ids == 0][:-1]
    assert data.tokenizer.decode(first_val_doc.tolist()) == val_docs[0]

    batch = next(data.train)
    assert all(batch[k].shape == (4, 32) and batch[k].dtype == torch.long for k in batch)
    val = list(data.val_batches(max_batches=2))
    assert len(val) == 2 and val[0]["input_ids"].shape == (4, 32)

    info = data.info()
    assert info["train_tokens"] == len(data.train_corpus) and info["val_tokens"] == len(data.val_corpus)
    assert info["vocab_size"] == VOCAB
    assert info["text"] == f"files {files_setup['paths'][0]} (val: 20% of the documents)"  # a sentence, not a list
    assert info["unigram_entropy_nats"] == pytest.approx(unigram_entropy(data.val_corpus.tokens, VOCAB))
    assert 0 < info["unigram_entropy_nats"] < np.log(VOCAB)


def test_second_construction_only_loads_from_disk(files_setup, monkeypatch):
    first = LMData(**files_setup)
    expected = [next(first.train) for _ in range(3)]

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached LMData must not read or tokenize documents")

    monkeypatch.setattr(lm_data_module, "read_documents", forbidden)
    monkeypatch.setattr(lm_data_module, "tokenize_documents", forbidden)
    second = LMData(**files_setup)
    assert tokenizer_fingerprint(second.tokenizer) == tokenizer_fingerprint(first.tokenizer)
    for want in expected:
        got = next(second.train)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_changed_file_rebuilds_token_cache(files_setup):
    first = LMData(**files_setup)
    write_jsonl(Path(files_setup["paths"][0]), synthetic_docs(500, seed=1))
    second = LMData(**files_setup)
    assert len(second.train_corpus) != len(first.train_corpus)  # same tokenizer, new documents


def test_explicit_val_paths_and_dp_ranks(files_setup, tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_docs(60, seed=2))
    config = {**files_setup, "val_paths": [str(val)], "eval_batch_size": 3}
    ranks = [LMData(**config, dp_rank=r, dp_world=2) for r in (0, 1)]
    single = LMData(**{**config, "batch_size": 8})
    assert int((single.val_corpus.tokens == EOS_ID).sum()) == 60
    assert next(single.val_batches(1))["input_ids"].shape == (3, 32)
    joined = torch.cat([next(ranks[0].train)["input_ids"], next(ranks[1].train)["input_ids"]])
    assert torch.equal(joined, next(single.train)["input_ids"])


def test_existing_tokenizer_larger_than_vocab_is_an_error(files_setup):
    LMData(**files_setup)
    with pytest.raises(ValueError, match="delete it"):
        LMData(**{**files_setup, "vocab_size": len(SPECIAL_TOKENS) + 256})


def test_bad_configuration_errors(files_setup):
    with pytest.raises(ValueError, match="unknown text source 'web'"):
        LMData(**{**files_setup, "source": "web"})
    with pytest.raises(ValueError, match="needs `paths`"):
        LMData(**{**files_setup, "paths": None})
    with pytest.raises(ValueError, match="takes no `paths`"):
        LMData(**{**files_setup, "source": "stdlib"})
    with pytest.raises(ValueError, match="val_fraction"):
        LMData(**{**files_setup, "val_fraction": 0.0})
    with pytest.raises(ValueError, match="val split has only"):
        LMData(**{**files_setup, "seq_len": 100_000})


def test_stdlib_source(tmp_path):
    data = LMData(str(tmp_path / "bpe.json"), VOCAB, seq_len=64, batch_size=2, cache_dir=str(tmp_path / "cache"))
    info = data.info()
    assert info["train_tokens"] > 100_000 and info["val_tokens"] > 10_000
    assert info["text"] == "stdlib docstrings (val: 10% of the modules)"
    assert next(data.train)["input_ids"].shape == (2, 64)


def test_your_own_text_as_the_readme_says(tmp_path, monkeypatch):
    """`data.source=files data.paths=[corpus/]` on configs/llm/tiny.yaml: the keys exist, and the tokenizer is the
    corpus's own (not the stdlib one cached under the same vocabulary size)."""
    from polymodal.config import instantiate, load_config

    repo = Path(__file__).resolve().parents[3]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, doc in enumerate(synthetic_docs(300, seed=1)):
        (corpus / f"{index:03d}.txt").write_text(doc, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    overrides = [
        "data.source=files",
        "data.paths=[corpus/]",
        f"constants.cache_dir={tmp_path}/cache",
        "constants.vocab_size=800",
    ]
    cfg = load_config(repo / "configs" / "llm" / "tiny.yaml", overrides)
    data = instantiate(cfg.data, seed=0, dp_rank=0, dp_world=1)
    tokenizers = sorted((tmp_path / "cache" / "tokenizers").glob("*.json"))
    assert [path.name.split("-")[0] for path in tokenizers] == ["files"]
    assert "résumé" in data.tokenizer.decode(data.tokenizer.encode("résumé").ids)
    assert int((data.train_corpus.tokens == EOS_ID).sum()) + int((data.val_corpus.tokens == EOS_ID).sum()) == 300


def test_the_largest_batch_is_shaped_like_training_batches_without_reading_a_file(files_setup):
    """What ``polymodal plan`` measures: made from the config alone, no tokenizer trained and no text read."""
    real = next(LMData(**files_setup).train)
    missing = {**files_setup, "paths": ["/no/such/docs.jsonl"], "tokenizer_path": "/no/such/bpe.json"}
    largest = LMData.largest_batch(**missing)
    assert {key: (value.shape, value.dtype) for key, value in largest.batch.items()} == {
        key: (value.shape, value.dtype) for key, value in real.items()
    }
    assert largest.description == "4 x 32 tokens"
