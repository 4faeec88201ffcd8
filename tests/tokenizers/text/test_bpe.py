import random
import threading

import pytest

from polymodal.tokenizers.text.bpe import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    load_or_train_bpe,
    load_tokenizer,
    min_vocab_size,
    save_tokenizer,
    tokenizer_fingerprint,
    train_bpe,
)

VOCAB = 800


def synthetic_docs(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "the",
        "data",
        "model",
        "token",
        "return",
        "value",
        "def",
        "self",
        "list",
        "größe",
        "naïve",
        "数据",
    ]
    docs = []
    for _ in range(n):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
        docs.append(f"def f_{rng.randint(0, 9)}(x):\n    {body}\n    return x + {rng.randint(0, 99)}\n")
    return docs


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(synthetic_docs(), VOCAB)


def test_special_token_layout():
    assert len(SPECIAL_TOKENS) == len(set(SPECIAL_TOKENS)) == 11 + 2 * 128 + 16
    assert SPECIAL_TOKENS[:3] == ["<|pad|>", "<|bos|>", "<|eos|>"]
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert "<|h_1|>" in SPECIAL_TOKENS and "<|w_128|>" in SPECIAL_TOKENS and "<|h_129|>" not in SPECIAL_TOKENS
    assert not any("unk" in t for t in SPECIAL_TOKENS)
    assert min_vocab_size() == len(SPECIAL_TOKENS) + 256


def test_trained_special_ids_are_contiguous_from_zero(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert len(SPECIAL_TOKENS) + 256 < tokenizer.get_vocab_size() <= VOCAB
    # the literal text of a special token encodes to that one id
    assert tokenizer.encode("<|eos|>").ids == [EOS_ID]


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii text",
        "  leading and trailing whitespace runs \t\t\n\n  ",
        "emoji 🤗🚀 and combining é (e\u0301), CJK 数据, RTL שלום, zero\u200bwidth",
        "def f(x):\n\tif x:\n        return {'a': [1, 2]}  # comment\r\n",
        "\x00\x01 control chars \x7f and a lone \ud7ff",
        "",
    ],
)
def test_round_trip_arbitrary_unicode(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text


def test_merges_compress_the_training_text(tokenizer):
    doc = synthetic_docs(1, seed=5)[0]
    assert len(tokenizer.encode(doc).ids) < len(doc.encode("utf-8")) / 2


def test_vocab_too_small_and_bad_frequency():
    with pytest.raises(ValueError, match="vocab_size=300 is too small"):
        train_bpe(["abc"], 300)
    with pytest.raises(ValueError, match="min_frequency"):
        train_bpe(["abc"], VOCAB, min_frequency=0)


def test_training_is_deterministic(tokenizer):
    assert tokenizer_fingerprint(train_bpe(synthetic_docs(), VOCAB)) == tokenizer_fingerprint(tokenizer)


def test_save_load_round_trip_and_errors(tokenizer, tmp_path):
    path = save_tokenizer(tokenizer, tmp_path / "sub" / "tok.json")
    assert tokenizer_fingerprint(load_tokenizer(path)) == tokenizer_fingerprint(tokenizer)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tok.json"]  # no temp leftovers
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt.json is corrupt"):
        load_tokenizer(corrupt)


def test_load_or_train_trains_once_then_loads(tmp_path):
    path = tmp_path / "tok.json"
    calls = []

    def corpus():
        calls.append(1)
        return synthetic_docs()

    first = load_or_train_bpe(path, VOCAB, corpus)
    assert path.is_file() and calls == [1]

    def must_not_train():
        raise AssertionError("corpus must not be read when the tokenizer exists")

    second = load_or_train_bpe(path, VOCAB, must_not_train)
    assert tokenizer_fingerprint(second) == tokenizer_fingerprint(first)
    with pytest.raises(ValueError, match="delete it"):
        load_or_train_bpe(path, 400, None)
    with pytest.raises(FileNotFoundError, match="no corpus"):
        load_or_train_bpe(tmp_path / "absent.json", VOCAB, None)


def test_load_or_train_rejects_foreign_special_layout(tmp_path):
    path = save_tokenizer(
        train_bpe(synthetic_docs(), VOCAB, special_tokens=["<|bos|>", "<|pad|>"]), tmp_path / "t.json"
    )
    with pytest.raises(ValueError, match="'<\\|pad\\|>' has id 1, expected 0"):
        load_or_train_bpe(path, VOCAB, None)


def test_concurrent_load_or_train_trains_once(tmp_path):
    path = tmp_path / "tok.json"
    calls, results = [], [None, None]

    def corpus():
        calls.append(1)
        return synthetic_docs()

    def worker(i):
        results[i] = tokenizer_fingerprint(load_or_train_bpe(path, VOCAB, corpus))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]
    assert results[0] == results[1] is not None
