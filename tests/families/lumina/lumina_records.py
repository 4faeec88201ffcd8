"""Small real record sets, written with the pre-tokenizer's own writers (shards, rank records, concat)."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from polymodal.families.lumina.records import RankRecord, concat_records, shard_path, write_or_check_manifest
from polymodal.families.lumina.shards import MappedShard, TokenSequence, write_shard
from polymodal.families.lumina.vocabulary import VocabularyLayout

LAYOUT = VocabularyLayout(text_vocab_size=512, codebook_size=256)
TOKENIZERS = {"text": {"sha256": "a" * 64}, "image": {"sha256": "b" * 64}}


def write_record_set(
    root: Path,
    lengths: Sequence[int],
    seed: int = 0,
    splits: int = 2,
    layout: VocabularyLayout = LAYOUT,
    tokenizers: dict | None = None,
) -> Path:
    """A record set of random items of ``lengths`` tokens (about 70% of them labelled) in ``root``, pre-tokenized
    as ``splits`` ranks of two chunks each; returns its record.json."""
    rng = np.random.default_rng(seed)
    manifest = {"splits": splits, "layout": layout.to_dict(), "tokenizers": tokenizers or TOKENIZERS}
    manifest_sha = write_or_check_manifest(root, manifest)
    for rank in range(splits):
        record = RankRecord(root, rank, splits, manifest_sha)
        items = [i for i in range(len(lengths)) if i % splits == rank]
        for chunk, part in enumerate((items[: len(items) // 2], items[len(items) // 2 :])):
            sequences = [
                TokenSequence(i, rng.integers(0, layout.vocab_size, lengths[i]), rng.random(lengths[i]) < 0.7)
                for i in part
            ]
            path = shard_path(root, rank, splits, chunk)
            write_shard(path, sequences, [], layout.token_dtype, {"manifest_sha256": manifest_sha})
            record.add(chunk, MappedShard(path))
        record.save(complete=True)
    concat_records(root, root / "record.json")
    return root / "record.json"
