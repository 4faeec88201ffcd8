"""``polymodal generate`` on a tiny exported 4M: from a caption, from pre-tokenized shards, and bad input."""

import argparse
import json

import pytest
import torch
from trained_runs import checkpointed_run, export

from polymodal.cli import main
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.data.synth.writers import write_shards
from polymodal.families.fourm.generate.run import conditioning_entries, read_shard_inputs, truth_specs
from polymodal.families.fourm.generate.schedules import schedule_from_dict
from polymodal.families.fourm.pretokenize import CropOptions, pretokenize_4m
from polymodal.tokenizers.loading import load_image_tokenizer
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import load_wordpiece, train_wordpiece


@pytest.fixture(scope="module")
def world(tmp_path_factory, fourm_modalities, model):
    base = tmp_path_factory.mktemp("generate")
    settings = dict(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
    fourm = {"_target_": "polymodal.families.fourm.model.build_fourm", "size": "tiny", "modalities": fourm_modalities}
    quantizer = {"_target_": "polymodal.tokenizers.image.quantizers.VectorQuantizer", "dim": 8, "codebook_size": 64}
    tokenizer = {
        "_target_": "polymodal.tokenizers.image.tokenizer.build_image_tokenizer",
        "downsample": 8,
        "channels": [8, 8, 8, 8],
        "quantizer": quantizer,
    }
    text = train_wordpiece(synthetic_scene_texts(20), model.modalities["caption"].vocab_size)
    world = {
        "model": checkpointed_run(base / "run", {**fourm, **settings}),
        "depth": export(base / "tok-depth", {**tokenizer, "modality": "depth"}),
        "text": save_tokenizer(text, base / "wordpiece.json"),
        "root": base / "scenes",
        "cache": base / "cache",
    }
    write_shards(world["root"], num_samples=3, samples_per_shard=3, size=32, modalities=("rgb", "depth", "caption"))
    depth = {"depth": load_image_tokenizer(world["depth"])}
    pretokenize_4m(world["root"], depth, options=CropOptions(n_crops=1, image_size=32), cache_dir=world["cache"])
    return world


def run(world, out, *flags):
    common = ["generate", "--model", str(world["model"]), "--text-tokenizer", str(world["text"]), "--out", str(out)]
    return main([*common, "--tokenizer", f"tok_depth@32={world['depth']}", *flags])


def test_caption_to_depth_and_det(world, tmp_path, capsys):
    flags = ["--cond", "caption", "--targets", "tok_depth@32,det", "--schemes", "maskgit,autoregressive"]
    flags += ["--steps", "2", "--caption", "a red cube", "--num-samples", "2", "--seed", "3"]
    assert run(world, tmp_path, *flags) == 0
    record = json.loads((tmp_path / "generations.json").read_text())
    assert (tmp_path / "generations.png").stat().st_size > 0 and len(record["samples"]) == 2
    assert record["samples"][0]["caption"]["text"] == "a red cube" and record["samples"][0]["det"]["generated"]
    assert [step["target"] for step in record["schedule"]] == ["tok_depth@32"] * 2 + ["det"]
    printed = capsys.readouterr()
    assert "wrote" in printed.out
    assert "generating tok_depth@32, det: 3/3 (100%)" in printed.err  # off a terminal: progress lines


def test_rgb_from_shards_with_a_yaml_schedule_and_a_caption_prompt(world, tmp_path):
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(
        "cond_domains: rgb@32\ntarget_domains: tok_depth@32-caption\nautoregression_schemes: roar-autoregressive\n"
        "decoding_steps: 2\ntemps: 0.5\ncfg_scales: 2.0-1.0\ncfg_grow_conditioning: true\ntop_p: 0.9\n"
    )
    pattern = f"{world['root']}/[rgb,caption,crop_settings]/shard-00000.tar"
    flags = ["--schedule", str(schedule), "--data", pattern, "--num-samples", "5", "--cache-dir", str(world["cache"])]
    assert run(world, tmp_path / "out", *flags, "--caption", "a [S_1]") == 0
    record = json.loads((tmp_path / "out" / "generations.json").read_text())
    assert len(record["samples"]) == 3  # the shard holds 3 samples
    assert all(sample["caption"]["ids"][0] == record["samples"][0]["caption"]["ids"][0] for sample in record["samples"])


def test_ground_truth_is_read_for_the_targets_the_shards_hold(world, model):
    modalities, text = model.modalities, load_wordpiece(world["text"])
    targets = ["tok_depth@32", "caption", "det"]
    pattern = f"{world['root']}/[rgb,tok_depth,caption,crop_settings]/shard-00000.tar"
    assert [spec.name for spec in truth_specs(pattern, targets, modalities)] == ["tok_depth@32", "caption"]
    no_crops = f"{world['root']}/[tok_depth,caption]/shard-00000.tar"
    assert [spec.name for spec in truth_specs(no_crops, targets, modalities)] == ["caption"]  # codes need a crop row
    schedule = schedule_from_dict({"cond_domains": "rgb@32", "target_domains": "-".join(targets)}, modalities)
    args = argparse.Namespace(data=pattern, caption=None, num_samples=2, cache_dir=str(world["cache"]))
    inputs = conditioning_entries(args, schedule, modalities, text)
    assert list(inputs.entries) == ["rgb@32"] and sorted(inputs.truths) == ["caption", "tok_depth@32"]
    alone = read_shard_inputs(pattern, [modalities["tok_depth@32"]], text, 2, str(world["cache"]))
    assert inputs.batch_size == 2 and torch.equal(inputs.truths["tok_depth@32"], alone["tok_depth@32"])  # same scenes
    args.data = f"{world['root']}/[rgb,caption,crop_settings]/shard-00000.tar"
    assert sorted(conditioning_entries(args, schedule, modalities, text).truths) == ["caption"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--targets", "tok_normal@32"], "unknown target modalities"),
        (["--targets", "rgb@32", "--caption", "x"], "cannot be a target"),
        (["--cond", "rgb@32", "--targets", "tok_rgb@32"], "no image tokenizer given for the target 'tok_rgb@32'"),
        (["--cond", "rgb@32", "--targets", "tok_depth@32"], "need inputs: give --data"),
        (["--targets", "caption", "--caption", "no sentinel"], "must end with"),
        (["--cond", "caption"], "at least --targets"),
    ],
)
def test_bad_input_prints_one_error_line(world, tmp_path, capsys, flags, message):
    assert run(world, tmp_path, *flags) == 2
    assert message in capsys.readouterr().err
