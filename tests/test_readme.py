"""The README's Python snippets run exactly as printed (on small data the test makes where they expect it)."""

import re
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tiny_image_tokenizers import export_tiny_tokenizer
from trained_runs import checkpointed_run

from polymodal.cli import main
from polymodal.config import load_config
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.data.synth.writers import write_shards
from polymodal.tokenizers.carried import copy_tokenizers
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import train_wordpiece

REPO = Path(__file__).resolve().parents[1]


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_multimodal_loader_snippet_collates_by_default(tmp_path, monkeypatch):
    snippet = python_snippet("ResumableLoader")
    modalities = ("rgb", "depth", "semseg", "det", "caption")
    write_shards(tmp_path / "data" / "scenes", 40, 4, seed=0, size=64, workers=1, modalities=modalities)
    monkeypatch.chdir(tmp_path)
    batch = run_snippet(snippet)["batch"]
    assert batch["rgb"].shape == (32, 3, 64, 64) and batch["depth"].shape == (32, 1, 32, 32)
    assert batch["semseg"].shape == (32, 64, 64) and batch["sample_id"].dtype == torch.int64
    assert len(batch["det"]) == 32 and isinstance(batch["det"][0], dict)  # boxes differ in number per scene
    assert len(batch["caption"]) == 32


def python_snippet(containing: str) -> str:
    (snippet,) = [s for s in readme_snippets() if containing in s]
    return snippet


def run_snippet(snippet: str) -> dict:
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def test_the_language_model_snippet_loads_a_run_and_samples(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(tiny_config), "experiment.output_dir=runs/llm-tiny"]) == 0
    capsys.readouterr()
    namespace = run_snippet(python_snippet('load_run("runs/llm-tiny")'))
    printed = capsys.readouterr().out
    assert printed.strip() and namespace["run"].generate("Return the", 40, 0.8, 0, 0.95, 0) == printed[:-1]


def test_the_fourm_snippet_generates_depth_and_captions(tmp_path, monkeypatch, capsys):
    """The shipped tiny 4M (random weights) in runs/fourm-tiny, carrying tiny tokenizers and a WordPiece file."""
    model = OmegaConf.to_container(load_config("fourm/tiny").model, resolve=True)
    run = checkpointed_run(tmp_path / "runs" / "fourm-tiny", model)
    wordpiece = save_tokenizer(train_wordpiece(synthetic_scene_texts(40), 8192), tmp_path / "wordpiece.json")
    depth = export_tiny_tokenizer(tmp_path / "tok-depth", "depth", codebook_size=1000)  # as tok_depth@64
    copy_tokenizers({"text": wordpiece, "tok_depth@64": depth}, run / "tokenizers")
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    namespace = run_snippet(python_snippet('load_run("runs/fourm-tiny")'))
    assert namespace["depth"].shape == (4, 1, 64, 64) and namespace["depth"].min() > 0
    captions = namespace["out"]["caption"]
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    assert capsys.readouterr().out == f"{captions}\n"
