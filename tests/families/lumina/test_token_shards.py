import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from polymodal.families.lumina.shards import ItemError, MappedShard, TokenSequence, write_shard


def random_sequences(rng: np.random.Generator, count: int) -> list[TokenSequence]:
    lengths = rng.integers(1, 40, size=count)
    return [
        TokenSequence(int(i) * 3, rng.integers(0, 70000, size=n), rng.random(n) < 0.5) for i, n in enumerate(lengths)
    ]


def test_a_shard_is_standard_safetensors_and_maps_back_item_by_item(tmp_path):
    rng = np.random.default_rng(0)
    sequences = random_sequences(rng, 9)
    errors = [ItemError(4, "x", "role_order", "turn 1 is from 'human'")]
    path = write_shard(tmp_path / "s.safetensors", sequences, errors, np.dtype(np.uint32), {"chunk": "2"})
    arrays = load_file(str(path))  # the safetensors package reads our writer's files
    with safe_open(str(path), framework="np") as handle:
        assert handle.metadata()["chunk"] == "2"
    assert arrays["tokens"].dtype == np.uint32 and len(arrays["tokens"]) == sum(len(s.tokens) for s in sequences)
    shard = MappedShard(path)
    assert len(shard) == 9 and shard.errors == errors and shard.metadata["chunk"] == "2"
    for k, sequence in enumerate(sequences):  # label bits straddle byte boundaries at random offsets
        tokens, labels = shard.item(k)
        np.testing.assert_array_equal(tokens, sequence.tokens)
        np.testing.assert_array_equal(labels, sequence.labels)
    np.testing.assert_array_equal(shard.all_labels(), np.concatenate([s.labels for s in sequences]))
    assert shard.item_index.tolist() == [3 * i for i in range(9)]


def test_same_chunk_same_bytes_and_empty_chunks_are_shards_too(tmp_path):
    sequences = random_sequences(np.random.default_rng(1), 5)
    first = write_shard(tmp_path / "a", sequences, [], np.dtype(np.uint32), {"b": "1", "a": "2"}).read_bytes()
    second = write_shard(tmp_path / "b", sequences, [], np.dtype(np.uint32), {"a": "2", "b": "1"}).read_bytes()
    assert first == second
    empty = MappedShard(write_shard(tmp_path / "e", [], [], np.dtype(np.uint16), {}))
    assert len(empty) == 0 and len(empty.tokens) == 0


def test_ids_that_do_not_fit_the_dtype_are_refused(tmp_path):
    with pytest.raises(ValueError, match="do not fit uint16"):
        write_shard(
            tmp_path / "s", [TokenSequence(0, np.array([70000]), np.array([True]))], [], np.dtype(np.uint16), {}
        )


@pytest.mark.parametrize("cut", [4, 20, -3])
def test_damaged_shards_are_refused_with_their_path(tmp_path, cut):
    path = write_shard(tmp_path / "s", random_sequences(np.random.default_rng(2), 3), [], np.dtype(np.uint32), {})
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match="damaged or not a shard"):
        MappedShard(path)
