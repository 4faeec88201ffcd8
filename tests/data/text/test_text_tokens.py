import math

import numpy as np
import pytest

from polymodal.data.text.tokens import (
    TokenCorpus,
    load_or_build_corpus,
    load_token_corpus,
    save_token_corpus,
    tokenize_documents,
    unigram_entropy,
)
from polymodal.tokenizers.text.bpe import EOS_ID, train_bpe

DOCS = ["hello world", "", "naïve 🤗 code:\n    return x", "hello again world"] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(DOCS * 4, 800)


def test_tokenize_documents_matches_per_document_encoding(tokenizer):
    corpus = tokenize_documents(tokenizer, DOCS, EOS_ID, batch_size=3)
    expected_tokens, expected_docs = [], []
    for i, doc in enumerate(DOCS):
        ids = tokenizer.encode(doc).ids + [EOS_ID]
        expected_tokens += ids
        expected_docs += [i] * len(ids)
    assert corpus.tokens.dtype == np.int32 and corpus.doc_ids.dtype == np.int32
    np.testing.assert_array_equal(corpus.tokens, expected_tokens)
    np.testing.assert_array_equal(corpus.doc_ids, expected_docs)
    for i, doc in enumerate(DOCS):
        ids = corpus.tokens[corpus.doc_ids == i]
        assert ids[-1] == EOS_ID and tokenizer.decode(ids[:-1].tolist()) == doc


def test_tokenize_documents_errors(tokenizer):
    with pytest.raises(ValueError, match="no documents"):
        tokenize_documents(tokenizer, [], EOS_ID)
    with pytest.raises(ValueError, match="batch_size"):
        tokenize_documents(tokenizer, DOCS, EOS_ID, batch_size=0)


def test_token_corpus_validation():
    with pytest.raises(ValueError, match="differ in length"):
        TokenCorpus(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        TokenCorpus(np.zeros((2, 2)), np.zeros((2, 2)))
    assert TokenCorpus(np.arange(3, dtype=np.int64), np.zeros(3)).tokens.dtype == np.int32


def test_save_load_round_trip_with_metadata(tmp_path):
    corpus = TokenCorpus(np.array([5, 6, 2, 7, 2]), np.array([0, 0, 0, 1, 1]))
    path = save_token_corpus(corpus, tmp_path / "c.safetensors", {"source": "unit", "tokenizer_sha256": "ab"})
    loaded, metadata = load_token_corpus(path)
    np.testing.assert_array_equal(loaded.tokens, corpus.tokens)
    np.testing.assert_array_equal(loaded.doc_ids, corpus.doc_ids)
    assert metadata == {"source": "unit", "tokenizer_sha256": "ab"}
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="junk.safetensors is corrupt"):
        load_token_corpus(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="absent"):
        load_token_corpus(tmp_path / "absent.safetensors")


def test_load_or_build_rebuilds_only_on_key_change_or_corruption(tmp_path):
    path = tmp_path / "cache" / "train.safetensors"
    builds = []

    def build(value):
        def make():
            builds.append(value)
            return TokenCorpus(np.full(4, value), np.zeros(4))

        return make

    assert load_or_build_corpus(path, build(1), "k1", {"source": "s"}).tokens[0] == 1
    assert load_or_build_corpus(path, build(2), "k1").tokens[0] == 1  # cached
    assert load_token_corpus(path)[1] == {"source": "s", "key": "k1"}
    assert load_or_build_corpus(path, build(3), "k2").tokens[0] == 3  # stale key
    path.write_bytes(b"truncated")
    assert load_or_build_corpus(path, build(4), "k2").tokens[0] == 4  # corrupt file
    assert builds == [1, 3, 4]
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.safetensors", "train.safetensors.lock"]


def test_unigram_entropy_known_distributions():
    assert unigram_entropy(np.array([0, 1, 2, 3] * 5), 8) == pytest.approx(math.log(4))
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert unigram_entropy(np.array([7, 7, 1, 3]), 8) == pytest.approx(expected)
    assert unigram_entropy(np.array([3, 3, 3]), 4) == 0.0


def test_unigram_entropy_errors():
    with pytest.raises(ValueError, match="at least one token"):
        unigram_entropy(np.array([], dtype=np.int32), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        unigram_entropy(np.array([0, 4]), 4)
