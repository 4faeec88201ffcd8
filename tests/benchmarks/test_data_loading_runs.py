"""Smoke test of benchmarks/data_loading.py: it runs, prints both sides and their ratios, and its webdataset
baseline decodes exactly what our loader decodes."""

import re

import pytest
import torch

BENCHMARK = "data_loading"
SMALL = ["--samples", "64", "--samples-per-shard", "32", "--size", "32"]


@pytest.fixture(scope="module")
def tree(benchmark, tmp_path_factory):
    return benchmark.prepare_shards(tmp_path_factory.mktemp("shards"), 64, 32, 32)


def test_small_run_prints_both_throughputs_and_ratios(benchmark, tree, capsys):
    argv = [*SMALL, "--data", str(tree.root), "--rounds", "1", "--batches", "2", "--warmup", "1"]
    results = benchmark.main([*argv, "--resume-batch", "3"])
    output = capsys.readouterr().out
    for workers in (0, 2):
        assert f"workers={workers}: throughput" in output and f"workers={workers}: resume at batch 3" in output
    assert len(re.findall(r"ours \(A\)\s+\d+\s+\d+", output)) == 2
    assert len(re.findall(r"webdataset \(B\)\s+\d+\s+\d+", output)) == 2
    assert len(re.findall(r"ratio ours/baseline\s+\d+\.\d+\s+\d+\.\d+", output)) == 4
    assert re.search(r"npy decodes, \d+ arrays of 64 random samples", output)
    assert re.search(r"load_npy \(ours\)\s+\d+\s+\d+\n.*np\.load \(before\)\s+\d+\s+\d+\n.*ratio\s+\d+\.\d+", output)
    assert [r.workers for r in results] == [0, 2]
    for result in results:
        for comparison in (result.throughput, result.resume):
            assert len(comparison.ours_s) == len(comparison.baseline_s) == 1
            assert comparison.ours_s[0] > 0 and comparison.baseline_s[0] > 0


def test_baseline_batches_hold_the_values_our_dataset_decodes(benchmark, tree, tmp_path):
    dataset = benchmark.MultimodalShards(tree.pattern, cache_dir=tmp_path)
    batch = next(iter(benchmark.baseline_loader(tree, batch_size=8, workers=0)))
    assert batch["rgb"].dtype == torch.uint8 and batch["rgb"].shape == (8, 3, 32, 32)
    for row, key in enumerate(batch["__key__"]):
        ours = dataset[int(key)]  # write_shards names sample i "{i:08d}" and shards are in order
        for modality in ("rgb", "depth", "semseg"):
            assert torch.equal(batch[modality][row], ours[modality])
        assert batch["caption"][row] == ours["caption"]


def test_resume_position_gives_the_batch_an_uninterrupted_loader_reaches(benchmark, tree, tmp_path):
    dataset = benchmark.MultimodalShards(tree.pattern, cache_dir=tmp_path)
    uninterrupted = benchmark.ours_loader(dataset, batch_size=16, workers=0)
    expected = [next(uninterrupted) for _ in range(6)][-1]  # batch 5 lies in the second epoch (4 per epoch)
    resumed = benchmark.ours_loader(dataset, batch_size=16, workers=0)
    resumed.load_state_dict(benchmark.position_state(resumed, 5))
    assert torch.equal(next(resumed)["sample_id"], expected["sample_id"])


def test_zipping_tars_whose_keys_diverge_raises(benchmark, tree, tmp_path):
    renamed = tmp_path / "depth"
    renamed.mkdir()
    source = tree.root / "rgb" / tree.shard_names[0]
    (tmp_path / "rgb").mkdir()
    (tmp_path / "rgb" / tree.shard_names[0]).write_bytes(source.read_bytes())
    (renamed / tree.shard_names[0]).write_bytes((tree.root / "depth" / tree.shard_names[1]).read_bytes())
    samples = benchmark.multi_tarfile_samples([{"url": tree.shard_names[0]}], tmp_path, ["rgb", "depth"])
    with pytest.raises(ValueError, match="depth has key"):
        next(samples)


@pytest.mark.parametrize(
    "argv", [["--samples", "0"], ["--rounds", "0"], ["--warmup", "-1"], ["--workers", "-1"], ["--batch-size", "0"]]
)
def test_bad_arguments_are_rejected(benchmark, argv, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert "error" in capsys.readouterr().err


def test_a_tree_with_mismatched_shards_is_rejected(benchmark, tmp_path):
    for modality in benchmark.MODALITIES:
        (tmp_path / modality).mkdir()
        (tmp_path / modality / "shard-00000.tar").write_bytes(b"")
    (tmp_path / "depth" / "shard-00000.tar").rename(tmp_path / "depth" / "shard-00001.tar")
    with pytest.raises(ValueError, match="depth/ holds shards"):
        benchmark.find_shard_tree(tmp_path, benchmark.MODALITIES)
