"""The language-model data object the trainer receives: tokenizer, packed train loader, val batches.

Everything expensive (tokenizer training, tokenization) is cached on disk, so constructing it again —
on every rank, or after a restart — only loads files. Documents are read only when a cache is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from polymodal import files
from polymodal.data.largest import LargestBatch
from polymodal.data.text.corpus import expand_document_paths, in_val_split, read_documents, stdlib_docstrings
from polymodal.data.text.packed import Batch, PackedSequenceLoader, count_windows, eval_batches
from polymodal.data.text.tokens import TokenCorpus, load_or_build_corpus, tokenize_documents, unigram_entropy
from polymodal.tokenizers.carried import TEXT
from polymodal.tokenizers.text.bpe import EOS_ID, load_or_train_bpe, special_tokens_fingerprint, tokenizer_fingerprint

log = logging.getLogger(__name__)

SplitName = Literal["train", "val"]
SOURCES = ("stdlib", "files")


class _DocumentSource:
    """Reads the train/val documents of a source on demand (once) and describes them for cache keys."""

    def __init__(self, source: str, paths: list[str] | None, val_paths: list[str] | None, val_fraction: float) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown text source {source!r}; expected one of {SOURCES}")
        if source == "files" and not paths:
            raise ValueError("source='files' needs `paths` (files, directories or globs of .txt/.jsonl)")
        if source == "stdlib" and (paths or val_paths):
            raise ValueError("source='stdlib' takes no `paths`/`val_paths`; use source='files' to read files")
        if not 0.0 < val_fraction < 1.0 and not val_paths:
            raise ValueError(f"val_fraction must be in (0, 1) to split off a val set, got {val_fraction}")
        self.source = source
        self.paths = list(paths or [])
        self.val_paths = list(val_paths or [])
        self.val_fraction = val_fraction
        self._file_documents: list[str] | None = None

    def identity(self) -> str:
        """What the data is, independent of file contents: used to name cache files."""
        return json.dumps([self.source, self.paths, self.val_paths, self.val_fraction])

    def __str__(self) -> str:
        """For people: ``stdlib docstrings (val: 10% of the modules)``, ``files corpus/ (val: valset/)``."""
        if self.source == "stdlib":
            return f"stdlib docstrings (val: {self.val_fraction:.0%} of the modules)"
        val = ", ".join(self.val_paths) if self.val_paths else f"{self.val_fraction:.0%} of the documents"
        return f"files {', '.join(self.paths)} (val: {val})"

    def describe(self, split: SplitName) -> str:
        """Everything the documents of ``split`` depend on, including file sizes and mtimes."""
        if self.source == "stdlib":
            stdlib = sysconfig.get_paths()["stdlib"]
            return f"stdlib-docstrings python={sys.version} root={stdlib} val_fraction={self.val_fraction} {split}"
        files = expand_document_paths(self.paths) + expand_document_paths(self.val_paths)
        stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return json.dumps([self.identity(), split, stats])

    def _all_file_documents(self) -> list[str]:
        if self._file_documents is None:
            self._file_documents = read_documents(self.paths)
        return self._file_documents

    def documents(self, split: SplitName) -> list[str]:
        if self.source == "stdlib":
            docs = stdlib_docstrings(split, self.val_fraction)
        elif self.val_paths:
            docs = self._all_file_documents() if split == "train" else read_documents(self.val_paths)
        else:
            # Split by the document text's hash: stable across runs, and duplicates land on one side.
            docs = [d for d in self._all_file_documents() if in_val_split(d, self.val_fraction) == (split == "val")]
        if not docs:
            raise ValueError(f"the {split} split of the {self} has no documents")
        return docs


class LMData:
    """Tokenizer + packed training loader + validation batches for next-token prediction.

    The validation ``unigram_entropy_nats`` in :meth:`info` is the entropy of the val split's own token
    distribution: the loss of the best context-free predictor fitted to the val data itself, a lower
    bound for any model that ignores context, which a trained LM must get well below.
    Every rank evaluates the same validation batches.
    """

    def __init__(
        self,
        tokenizer_path: str | None,
        vocab_size: int,
        seq_len: int,
        batch_size: int,
        source: str = "stdlib",
        paths: list[str] | None = None,
        val_paths: list[str] | None = None,
        val_fraction: float = 0.1,
        cache_dir: str | None = None,
        eval_batch_size: int | None = None,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world: int = 1,
    ) -> None:
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 or None, got {eval_batch_size}")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.tokens_per_sample = seq_len
        self.eval_batch_size = eval_batch_size or batch_size
        self._docs = _DocumentSource(source, paths, val_paths, val_fraction)
        if tokenizer_path is None:  # one tokenizer per corpus and vocabulary size, trained on its train split
            corpus_name = hashlib.sha256(self._docs.identity().encode()).hexdigest()[:12]
            name = f"{source}-bpe{vocab_size}-{corpus_name}-{special_tokens_fingerprint()}.json"
            tokenizer_path = str(files.cache_dir("tokenizers", cache_dir) / name)
        self.tokenizer = load_or_train_bpe(tokenizer_path, vocab_size, corpus=lambda: self._docs.documents("train"))
        self._tokenizer_path = tokenizer_path
        self._fingerprint = tokenizer_fingerprint(self.tokenizer)
        cache_name = hashlib.sha256(f"{Path(tokenizer_path).resolve()}|{self._docs.identity()}".encode()).hexdigest()
        self._cache_stem = files.cache_dir("tokens", cache_dir) / cache_name[:16]
        self.train_corpus = self._tokenized("train")
        self.val_corpus = self._tokenized("val")
        if count_windows(self.val_corpus, seq_len) == 0:
            raise ValueError(
                f"the val split has only {len(self.val_corpus)} tokens, not enough for one window of seq_len={seq_len}"
            )
        self.train = PackedSequenceLoader(self.train_corpus, seq_len, batch_size, seed, dp_rank, dp_world)

    @classmethod
    def largest_batch(
        cls, seq_len: int, batch_size: int, device: torch.device | str = "cpu", **corpus_and_tokenizer: Any
    ) -> LargestBatch:
        """A batch of the shape ``train`` yields (one document per row; every batch has this shape), from the
        config alone: no tokenizer is trained and no text read (``corpus_and_tokenizer``: the other arguments,
        which change no shape). See :mod:`polymodal.data.largest`."""
        zeros = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
        batch = {
            "input_ids": zeros,
            "target_ids": zeros.clone(),
            "document_ids": zeros.clone(),
            "position_ids": torch.arange(seq_len, device=device).repeat(batch_size, 1),
        }
        return LargestBatch(batch, f"{batch_size} x {seq_len} tokens")

    def _tokenized(self, split: SplitName) -> TokenCorpus:
        description = self._docs.describe(split)
        key = hashlib.sha256(f"{self._fingerprint}\n{description}".encode()).hexdigest()

        def build() -> TokenCorpus:
            log.info("tokenizing the %s split of the %s", split, self._docs)
            return tokenize_documents(self.tokenizer, self._docs.documents(split), EOS_ID)

        return load_or_build_corpus(
            f"{self._cache_stem}-{split}.safetensors",
            build,
            key,
            metadata={"tokenizer_sha256": self._fingerprint, "source": f"{self._docs.identity()} {split}"},
        )

    def val_batches(self, max_batches: int | None) -> Iterator[Batch]:
        """Sequential, deterministic validation batches (the same on every call)."""
        return eval_batches(self.val_corpus, self.seq_len, self.eval_batch_size, max_batches)

    def tokenizer_paths(self) -> dict[str, str]:
        """The BPE tokenizer the text was encoded with (a run carries a copy)."""
        return {TEXT: self._tokenizer_path}

    def info(self) -> dict[str, float | int | str]:
        return {
            "text": str(self._docs),
            "train_tokens": len(self.train_corpus),
            "val_tokens": len(self.val_corpus),
            "unigram_entropy_nats": unigram_entropy(self.val_corpus.tokens, self.vocab_size),
            "vocab_size": self.vocab_size,
        }
