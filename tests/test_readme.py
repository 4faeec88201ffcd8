"""The README's Python snippets run exactly as printed (on small data the test makes where they expect it)."""

import re
from pathlib import Path

import torch

from polymodal.data.synth.writers import write_shards

REPO = Path(__file__).resolve().parents[1]


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_multimodal_loader_snippet_collates_by_default(tmp_path, monkeypatch):
    (snippet,) = [s for s in readme_snippets() if "ResumableLoader" in s]
    modalities = ("rgb", "depth", "semseg", "det", "caption")
    write_shards(tmp_path / "data" / "scenes", 40, 4, seed=0, size=64, workers=1, modalities=modalities)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    batch = namespace["batch"]
    assert batch["rgb"].shape == (32, 3, 64, 64) and batch["depth"].shape == (32, 1, 32, 32)
    assert batch["semseg"].shape == (32, 64, 64) and batch["sample_id"].dtype == torch.int64
    assert len(batch["det"]) == 32 and isinstance(batch["det"][0], dict)  # boxes differ in number per scene
    assert len(batch["caption"]) == 32
