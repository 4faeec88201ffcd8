"""A tokenized text corpus held in memory as one flat token stream, cached on disk as safetensors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from polymodal.files import atomic_output, exclusive_lock

log = logging.getLogger(__name__)

CACHE_KEY_FIELD = "key"


@dataclass
class TokenCorpus:
    """All documents concatenated, each followed by EOS.

    ``tokens[i]`` is a token id and ``doc_ids[i]`` the index of the document it belongs to (its EOS
    included); both are flat int32 arrays of the same length.
    """

    tokens: np.ndarray
    doc_ids: np.ndarray

    def __post_init__(self) -> None:
        self.tokens = np.ascontiguousarray(self.tokens, dtype=np.int32)
        self.doc_ids = np.ascontiguousarray(self.doc_ids, dtype=np.int32)
        if self.tokens.ndim != 1 or self.doc_ids.ndim != 1:
            raise ValueError(
                f"TokenCorpus arrays must be 1-D, got tokens {self.tokens.shape} and doc_ids {self.doc_ids.shape}"
            )
        if self.tokens.shape != self.doc_ids.shape:
            raise ValueError(
                f"TokenCorpus tokens ({len(self.tokens)}) and doc_ids ({len(self.doc_ids)}) differ in length"
            )

    def __len__(self) -> int:
        return len(self.tokens)


def tokenize_documents(tokenizer: Tokenizer, docs: Sequence[str], eos_id: int, batch_size: int = 1024) -> TokenCorpus:
    """Encode ``docs`` in batches (``encode_batch`` runs in parallel) and append ``eos_id`` to each."""
    if not docs:
        raise ValueError("tokenize_documents got no documents")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pieces: list[np.ndarray] = []
    eos = np.array([eos_id], dtype=np.int32)
    for start in range(0, len(docs), batch_size):
        for encoding in tokenizer.encode_batch(list(docs[start : start + batch_size]), add_special_tokens=False):
            pieces.append(np.asarray(encoding.ids, dtype=np.int32))
            pieces.append(eos)
    lengths = np.array([len(p) for p in pieces[0::2]], dtype=np.int64) + 1
    doc_ids = np.repeat(np.arange(len(docs), dtype=np.int32), lengths)
    return TokenCorpus(tokens=np.concatenate(pieces), doc_ids=doc_ids)


def save_token_corpus(corpus: TokenCorpus, path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Write ``corpus`` and string ``metadata`` as one safetensors file, atomically."""
    target = Path(path)
    with atomic_output(target) as tmp:
        save_file({"tokens": corpus.tokens, "doc_ids": corpus.doc_ids}, str(tmp), metadata=dict(metadata))
    return target


def load_token_corpus(path: str | Path) -> tuple[TokenCorpus, dict[str, str]]:
    """Read a file written by :func:`save_token_corpus`: (corpus, metadata)."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"token corpus file not found: {source}")
    try:
        with safe_open(str(source), framework="np") as fh:
            metadata = dict(fh.metadata() or {})
        arrays = load_file(str(source))
        return TokenCorpus(tokens=arrays["tokens"], doc_ids=arrays["doc_ids"]), metadata
    except (SafetensorError, KeyError, ValueError) as err:
        raise ValueError(f"token corpus file {source} is corrupt or has the wrong layout: {err}") from err


def load_or_build_corpus(
    cache_path: str | Path,
    build: Callable[[], TokenCorpus],
    key: str,
    metadata: Mapping[str, str] | None = None,
) -> TokenCorpus:
    """Return the cached corpus at ``cache_path`` if its stored key equals ``key``, else ``build()`` it,
    cache it (atomically, under a lock so concurrent ranks build it once) and return it.

    ``key`` should identify everything the tokens depend on (tokenizer JSON hash + source description).
    ``metadata`` is stored alongside for humans (e.g. tokenizer hash, source name).
    """
    target = Path(cache_path)
    with exclusive_lock(target):
        if target.exists():
            try:
                corpus, stored = load_token_corpus(target)
            except ValueError as err:
                log.warning("rebuilding token cache: %s", err)
            else:
                if stored.get(CACHE_KEY_FIELD) == key:
                    return corpus
                log.info("token cache %s is stale (key changed); rebuilding", target)
        corpus = build()
        save_token_corpus(corpus, target, {**(metadata or {}), CACHE_KEY_FIELD: key})
        return corpus


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the token frequency distribution of ``tokens``.

    This is the cross-entropy a model that ignores all context would reach on this very data (its best
    constant prediction is the empirical distribution), so a language model must get far below it.
    """
    flat = np.asarray(tokens).reshape(-1)
    if flat.size == 0:
        raise ValueError("unigram_entropy needs at least one token")
    if flat.min() < 0 or flat.max() >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got range [{flat.min()}, {flat.max()}]")
    counts = np.bincount(flat, minlength=vocab_size)
    probs = counts[counts > 0] / flat.size
    return float(-(probs * np.log(probs)).sum())
