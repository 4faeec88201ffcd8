"""``polymodal train --config NAME --debug`` on every shipped experiment config, exactly as printed, from a folder
laid out as the README leaves it (scenes, pre-tokenized codes with their tokenizers, the WordPiece file, an export
of a 4M, Lumina records of the synthetic conversations): the CPU-sized configs run their 20 debug steps; the
GPU-sized ones, on a machine without a GPU, stop with one line that says so."""

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tiny_image_tokenizers import export_tiny_tokenizer
from trained_runs import export

from polymodal.cli import main
from polymodal.config import load_config
from polymodal.config.loader import experiment_configs
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import train_wordpiece

CODEBOOKS = {"rgb": 1000, "depth": 256, "normal": 256, "semseg": 128}  # as configs/fourm/data/synth_tiny.yaml
GPU_SIZED = [name for name in experiment_configs() if load_config(name).experiment.device == "cuda"]
CPU_SIZED = [name for name in experiment_configs() if name not in GPU_SIZED]


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory) -> Path:
    """What the README's commands leave behind, at toy size, built with those commands where they are cheap."""
    root = tmp_path_factory.mktemp("readme")
    previous = Path.cwd()
    os.chdir(root)
    try:
        synth = ["synth", "--out", "data/scenes", "--format", "shards", "--num-samples", "128"]
        assert main([*synth, "--samples-per-shard", "32"]) == 0  # a whole batch of 32 in the val shard
        imagefolder = ["synth", "--out", "data/scenes_imagefolder", "--format", "imagefolder", "--num-samples", "64"]
        assert main([*imagefolder, "--val-fraction", "0.5"]) == 0  # a batch of 32 in val
        colours = ["synth", "--out", "data/scenes_imagefolder_colour", "--format", "imagefolder", "--label", "colour"]
        assert main([*colours, "--num-samples", "64", "--val-fraction", "0.5"]) == 0
        tokenizers = [f"--tokenizer={m}={export_tiny_tokenizer(root / f'tok-{m}', m, n)}" for m, n in CODEBOOKS.items()]
        assert main(["pretokenize-4m", "--source", "data/scenes", "--n-crops", "2", *tokenizers]) == 0
        wordpiece = train_wordpiece(synthetic_scene_texts(100), 8192)
        save_tokenizer(wordpiece, root / "data" / "tokenizers" / "4m-wordpiece.json")
        fourm = OmegaConf.to_container(load_config("fourm/tiny").model, resolve=True)
        export(root / "exported" / "fourm-tiny", fourm)
        conversations = ["synth", "--out", "data/conversations", "--format", "conversations", "--num-samples", "64"]
        assert main(conversations) == 0
        bpe = ["--output", "data/tokenizers/lumina-bpe-1024.json", "--vocab-size", "1024"]
        assert main(["lumina", "train-text", "--in_filename", "data/conversations/conversations.json", *bpe]) == 0
        records = ["--in_filename", "data/conversations/conversations.json", "--out_dir", "data/lumina-records"]
        records += ["--target_size", "64", "--text_vocab_size", "1024", "--text_tokenizer", bpe[1]]
        assert main(["lumina", "pretokenize", *records, "--image_tokenizer", str(root / "tok-rgb")]) == 0
        concat = ["--sub_record_dir", "data/lumina-records", "--save_path", "data/lumina-records/record.json"]
        assert main(["lumina", "concat-records", *concat]) == 0
    finally:
        os.chdir(previous)
    return root


def test_every_shipped_experiment_is_covered():
    assert len(CPU_SIZED) >= 9 and len(GPU_SIZED) >= 10
    assert {"llm/tiny", "fourm/tiny", "fourm/vit_classify_tiny", "tokenizers/rgb_tiny", "lumina/tiny"} <= set(CPU_SIZED)
    assert {"aimv1/tiny", "aimv2/tiny", "vit/tiny"} <= set(CPU_SIZED)
    assert {"aimv1/600m", "aimv2/large"} <= set(GPU_SIZED)


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_SIZED)
def test_debug_runs_on_a_cpu_sized_config(name, readme_folder, monkeypatch, capsys):
    monkeypatch.chdir(readme_folder)
    torch.set_num_threads(2)
    assert main(["train", "--config", name, "--debug"]) == 0
    output_dir = readme_folder / f"{load_config(name).experiment.output_dir}-debug"
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir())[-1] == "step_00000020"
    assert "finished at step 20" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU-sized configs run here; this checks the CPU refusal")
@pytest.mark.parametrize("name", GPU_SIZED)
def test_debug_on_a_gpu_sized_config_without_a_gpu_is_one_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", name, "--debug"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no CUDA device is available" in error
