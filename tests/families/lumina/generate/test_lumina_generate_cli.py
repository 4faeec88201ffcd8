"""``polymodal generate`` and ``load_run`` on a tiny exported run of the family: images of the squarest bucket by
default, answers about an image, every drawn block well formed, and bad input in one line."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.cli import main
from polymodal.families.lumina.api import LuminaRun
from polymodal.families.lumina.generate.settings import SamplingSettings
from polymodal.families.lumina.vocabulary import parse_image_block
from polymodal.runs import load_run


def generate(lumina_run, out, *flags):
    return main(["generate", "--model", str(lumina_run["run"]), "--out", str(out), *flags])


def test_prompts_and_an_image_to_a_sheet_and_a_record(lumina_run, tmp_path, capsys):
    flags = ["--prompt", "a red cube", "--prompt", "two blue balls <|eot|>", "--image", str(lumina_run["image"])]
    assert generate(lumina_run, tmp_path, *flags, "--num-samples", "2", "--max-new-tokens", "6", "--seed", "3") == 0
    record = json.loads((tmp_path / "generations.json").read_text())
    layout = load_run(lumina_run["run"]).layout
    images = [s for s in record["samples"] if s["task"] == "text_to_image"]
    captions = [s for s in record["samples"] if s["task"] == "caption"]
    assert len(images) == 4 and len(captions) == 2 and record["seed"] == 3
    assert [(s["prompt"], s["sample"]) for s in images][:2] == [("a red cube", 0), ("a red cube", 1)]
    for sample in images:
        assert sample["size"] == [64, 64]  # the squarest bucket of the records' target size
        assert parse_image_block(np.array(sample["tokens"][:-1]), layout).shape == (8, 8)
        assert sample["tokens"][-1] == layout.end_of_turn
    for sample in captions:
        assert isinstance(sample["text"], str) and 0 < len(sample["tokens"]) <= 6
        assert not layout.is_image_code(np.array(sample["tokens"])).any()
    sheet = Image.open(tmp_path / "generations.png")
    assert sheet.width > 2 * 192 and sheet.height > 3 * 192  # a row per prompt and image, a column per sample
    assert "wrote" in capsys.readouterr().out


def test_a_size_of_whole_patches_and_no_guidance(lumina_run, tmp_path):
    flags = ["--prompt", "a ball", "--size", "32x16", "--cfg-scale", "1", "--temperature", "0"]
    assert generate(lumina_run, tmp_path, *flags) == 0
    (sample,) = json.loads((tmp_path / "generations.json").read_text())["samples"]
    layout = load_run(lumina_run["run"]).layout
    assert parse_image_block(np.array(sample["tokens"][:-1]), layout).shape == (2, 4)  # 16 rows x 32 columns px


def test_load_run_gives_the_familys_run_for_python(lumina_run):
    run = load_run(lumina_run["run"])
    assert isinstance(run, LuminaRun)
    assert run.image_sizes().target_size == 64 and (64, 64) in run.image_sizes().buckets
    settings = SamplingSettings(cfg_scale=2.0)
    out = run.text_to_image(
        ["a cube"] * 2, size=(32, 32), settings=settings, generator=torch.Generator().manual_seed(1)
    )
    assert out.codes.shape == (2, 4, 4) and out.pixels.shape == (2, 3, 32, 32) and out.turns.shape == (2, 25)
    again = run.text_to_image(
        ["a cube"] * 2, size=(32, 32), settings=settings, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(out.turns, again.turns)
    captions = run.caption([lumina_run["image"]], max_new_tokens=4)
    assert len(captions.texts) == 1 and captions.images[0].size[0] % 16 == 0


def test_a_run_whose_records_are_gone_needs_a_size_or_a_target_size(lumina_run, tmp_path):
    moved = tmp_path / "data.yaml"
    shutil.move(lumina_run["data_config"], moved)
    try:
        assert load_run(lumina_run["run"]).image_sizes().buckets == []
        assert generate(lumina_run, tmp_path / "a", "--prompt", "x") == 2
        assert generate(lumina_run, tmp_path / "b", "--prompt", "x", "--target-size", "32", "--cfg-scale", "1") == 0
        (sample,) = json.loads((tmp_path / "b" / "generations.json").read_text())["samples"]
        assert sample["size"] == [32, 32]
    finally:
        shutil.move(moved, lumina_run["data_config"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "nothing to generate"),
        (["--prompt", "x", "--size", "24x24"], "sides must be multiples of 16 px or a bucket of target size 64"),
        (["--prompt", "x", "--top-p", "2"], "top_p must lie in [0, 1]"),
        (["--image", "missing.png"], "missing_image"),
        (["--image", "x.png", "--question", "no placeholder"], "the question must hold one <|image|> placeholder"),
    ],
)
def test_bad_input_prints_one_error_line(lumina_run, tmp_path, capsys, flags, message):
    assert generate(lumina_run, tmp_path, *flags) == 2
    assert message in capsys.readouterr().err


def test_a_size_is_width_x_height(lumina_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        generate(lumina_run, tmp_path, "--prompt", "x", "--size", "24")
    assert "'24' is not WIDTHxHEIGHT in pixels" in capsys.readouterr().err
