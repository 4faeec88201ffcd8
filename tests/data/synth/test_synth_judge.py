"""The colour and shape judge: targets from the renderer's captions, any image size, deterministic training that
learns, and the cache."""

import pytest
import torch

from polymodal.data.synth.judge import (
    LABELS,
    AttributeJudge,
    attribute_targets,
    blurred,
    judge_for,
    rendered_examples,
    train_judge,
)
from polymodal.data.synth.judge_settings import JudgeSettings
from polymodal.data.synth.render import render_scene, render_scenes
from polymodal.data.synth.scoring import attribute_scores, mentioned_attributes

TINY = JudgeSettings(size=32, num_scenes=96, steps=40, batch_size=16, width=8, lr=5e-3)


@pytest.fixture(scope="module")
def judge() -> AttributeJudge:
    return train_judge(TINY)


def test_targets_mark_the_named_colours_and_shapes():
    targets = attribute_targets([({"red"}, {"cube", "cone"}), (set(), set())])
    assert targets.shape == (2, len(LABELS)) and targets[1].sum() == 0
    assert {LABELS[i] for i in targets[0].nonzero().flatten().tolist()} == {"red", "cube", "cone"}


def test_rendered_examples_are_labelled_by_the_first_caption():
    pixels, targets = rendered_examples(3, 4, 32)
    assert pixels.shape == (4, 3, 32, 32) and 0 <= pixels.min() and pixels.max() <= 1
    expected = attribute_targets([mentioned_attributes(render_scene(3, i, 32)["caption"][0]) for i in range(4)])
    assert torch.equal(targets, expected)


def test_judge_reads_any_size_and_thresholds_at_one_half():
    judge = AttributeJudge(width=4).eval()
    for size in [(32, 32), (16, 48), (64, 40)]:
        assert judge(torch.rand(2, 3, *size)).shape == (2, len(LABELS))
    with torch.no_grad():
        judge.scores.weight.zero_()
        judge.scores.bias.copy_(torch.tensor([1.0 if name in ("blue", "sphere") else -1.0 for name in LABELS]))
    assert judge.judge(torch.rand(3, 3, 16, 16), batch_size=2) == [({"blue"}, {"sphere"})] * 3


def test_blurring_keeps_shape_and_range_and_softens():
    pixels = (torch.rand(4, 3, 32, 32) > 0.5).float()
    soft = blurred(pixels, torch.Generator().manual_seed(0))
    assert soft.shape == pixels.shape and soft.min() >= -1e-6 and soft.max() <= 1 + 1e-6
    assert (soft - pixels).abs().mean() > 0.05  # a random checkerboard does not survive down-sampling


def test_training_is_deterministic_and_beats_chance_on_held_out_renders(judge):
    again = train_judge(TINY)
    for name, value in judge.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    scenes = render_scenes(10_000, 64, 32)
    judged = judge.judge(torch.stack([scene["rgb"] for scene in scenes]).float() / 255)
    truth = [mentioned_attributes(scene["caption"][0]) for scene in scenes]
    colours = attribute_scores([j[0] for j in judged], [t[0] for t in truth])
    assert colours["recall"] is not None and colours["recall"] > 0.3  # vs ~1/8 guessing one colour


def test_judge_for_trains_once_then_loads_from_the_cache(judge, tmp_path, monkeypatch):
    first = judge_for(TINY, tmp_path)
    assert (tmp_path / TINY.cache_name).is_file()
    monkeypatch.setattr("polymodal.data.synth.judge.train_judge", lambda settings: pytest.fail("retrained"))
    second = judge_for(TINY, tmp_path)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]) and torch.equal(value, judge.state_dict()[name])
    assert not second.training


def test_settings_refuse_non_positive_values_and_name_the_cache_by_every_setting():
    with pytest.raises(ValueError, match="positive"):
        JudgeSettings(steps=0)
    assert JudgeSettings(size=32).cache_name != JudgeSettings().cache_name


@pytest.mark.parametrize("damage", [b"", b"not a safetensors file", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_a_damaged_cached_judge_is_trained_again_with_a_warning(judge, tmp_path, caplog, damage):
    (tmp_path / TINY.cache_name).write_bytes(damage)
    with caplog.at_level("WARNING", logger="polymodal"):
        again = judge_for(TINY, tmp_path)
    assert "cannot be read" in caplog.text
    for name, value in judge.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert judge_for(TINY, tmp_path).state_dict().keys() == judge.state_dict().keys()  # the file is whole again
