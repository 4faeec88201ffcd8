import argparse
import json

import pytest
from PIL import Image

from polymodal.cli import main as cli_main
from polymodal.commands.synth import add_synth_arguments, synth_main
from polymodal.config import ConfigError
from polymodal.data.synth.labels import ATTRIBUTE_CLASSES
from polymodal.data.synth.preview import COLUMNS


def _run(*argv):
    return synth_main(add_synth_arguments(argparse.ArgumentParser()).parse_args(list(argv)))


def test_shards_and_preview(tmp_path):
    preview = tmp_path / "grid.png"
    code = _run(
        "--out",
        str(tmp_path / "data"),
        "--num-samples",
        "5",
        "--samples-per-shard",
        "2",
        "--workers",
        "1",
        "--modalities",
        "rgb,caption",
        "--preview",
        str(preview),
        "--preview-rows",
        "2",
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["caption", "rgb"]
    assert len(list((tmp_path / "data" / "rgb").glob("shard-*.tar"))) == 3
    width, height = Image.open(preview).size
    assert width > len(COLUMNS) * 64 and height > 2 * 64


def test_conversations_format(tmp_path):
    assert _run("--out", str(tmp_path), "--format", "conversations", "--num-samples", "1", "--workers", "1") == 0
    assert (tmp_path / "conversations.json").is_file() and not (tmp_path / "bad_items.json").exists()


def test_conversations_with_bad_items_as_jsonl(tmp_path):
    argv = ["--out", str(tmp_path), "--format", "conversations", "--num-samples", "4", "--size", "32", "--workers", "1"]
    assert _run(*argv, "--bad-fraction", "0.5", "--jsonl") == 0
    lines = (tmp_path / "conversations.jsonl").read_bytes().splitlines()
    assert len(lines) == 4 * 3 and json.loads((tmp_path / "bad_items.json").read_text())


@pytest.mark.parametrize("label", [None, "shape"])
def test_imagefolder_classes_are_the_chosen_label(tmp_path, label):
    argv = ["--out", str(tmp_path), "--format", "imagefolder", "--num-samples", "3", "--size", "16", "--workers", "1"]
    assert _run(*argv, *(["--label", label] if label else [])) == 0
    names = list(ATTRIBUTE_CLASSES[label or "count"])
    assert json.loads((tmp_path / "classes.json").read_text()) == names
    assert {path.parent.name for path in tmp_path.glob("*/*/*.png")} <= set(names)
    assert set(json.loads((tmp_path / "train" / "attributes.json").read_text())["classes"]) == set(ATTRIBUTE_CLASSES)


def test_an_unknown_label_is_a_one_line_error(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path / "out"), "--format", "imagefolder", "--label", "size"]
    assert cli_main(argv) != 0
    expected = "error: unknown label attribute 'size'; choose from count, colour, shape, object\n"
    assert capsys.readouterr().err == expected
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "nothing to do"),
        (["--preview", "x.png", "--preview-rows", "0"], "preview-rows"),
        (["--out", "x", "--num-samples", "0"], "num_samples"),
        (["--out", "x", "--workers", "-1"], "workers"),
        (["--out", "x", "--format", "conversations", "--bad-fraction", "1.5"], "bad_fraction"),
        (["--out", "x", "--format", "conversations", "--size", "40"], "multiple of 16"),
        (["--out", "x", "--label", "colours"], "unknown label attribute 'colours'"),
    ],
)
def test_bad_arguments(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        _run(*argv)
