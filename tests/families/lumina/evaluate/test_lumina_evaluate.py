"""``polymodal eval`` of the image-text family on a tiny exported run: every score recomputed by hand from the
predictions (model, constant caption, rolled-caption floor, tokenizer ceiling), well-formed blocks, the outputs of
the command, and bad input in one line."""

import json

import pytest
import torch
from PIL import Image

from polymodal.cli import main
from polymodal.data.synth.judge import judge_for
from polymodal.data.synth.judge_settings import JudgeSettings
from polymodal.data.synth.scoring import caption_task, mentioned_attributes
from polymodal.families.lumina.evaluate.report import format_report
from polymodal.families.lumina.evaluate.settings import LuminaEvalSettings
from polymodal.families.lumina.evaluate.tasks import HeldOutScenes, evaluate_lumina, is_image_turn
from polymodal.families.lumina.generate.settings import SamplingSettings
from polymodal.runs import load_run

JUDGE = JudgeSettings(size=64, num_scenes=16, steps=3, batch_size=4, width=4)
SETTINGS = LuminaEvalSettings(
    batch_size=3, baseline_scenes=6, max_new_tokens=6, drawing=SamplingSettings(cfg_scale=2.0), judge=JUDGE
)
NUM_SCENES = 4


@pytest.fixture(scope="module")
def judge_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("judges")


@pytest.fixture(scope="module")
def evaluated(lumina_run, judge_cache):
    run = load_run(lumina_run["run"])
    judge = judge_for(JUDGE, judge_cache)
    return run, judge, evaluate_lumina(run, judge, NUM_SCENES, settings=SETTINGS)


def by_hand(judged, captions, kind):
    """(precision, recall) of judged attribute sets against captions, pooled with plain loops."""
    index = ("colour", "shape").index(kind)
    hits = said = there = 0
    for seen, caption in zip(judged, captions, strict=True):
        named = mentioned_attributes(caption)[index]
        hits += len(seen[index] & named)
        said += len(seen[index])
        there += len(named)
    return (hits / said if said else None), (hits / there if there else None)


def test_scenes_are_held_out_renders_at_the_squarest_bucket(evaluated):
    _, _, evaluation = evaluated
    scenes = HeldOutScenes.render(10_000, NUM_SCENES, (64, 64), "expected")
    assert torch.equal(evaluation.scenes.rgb, scenes.rgb) and evaluation.scenes.captions == scenes.captions
    assert evaluation.report["image_size"] == [64, 64] and evaluation.report["seed"] == 10_000


def test_caption_scores_are_the_shared_caption_task(evaluated):
    _, _, evaluation = evaluated
    training = HeldOutScenes.render(0, SETTINGS.baseline_scenes, (64, 64), "training")
    expected = caption_task(evaluation.predictions.captions, evaluation.scenes.captions, training.captions)
    got = evaluation.report["tasks"]["image->caption"]
    assert {k: v for k, v in got.items() if k != "baseline"} == {k: v for k, v in expected.items() if k != "baseline"}
    assert got["baseline"].startswith(expected["baseline"])


def test_text_to_image_scores_model_floor_and_ceiling_by_hand(evaluated):
    run, judge, evaluation = evaluated
    scenes, predictions = evaluation.scenes, evaluation.predictions
    assert predictions.drawn.shape == scenes.rgb.shape
    tokenizer = run.image_tokenizer
    expected = tokenizer.decode(tokenizer.encode(scenes.rgb)).float()
    torch.testing.assert_close(predictions.reconstructed, expected, atol=1e-5, rtol=1e-5)  # batches of 3 vs 4
    drawn, through = judge.judge(predictions.drawn), judge.judge(predictions.reconstructed)
    rolled = scenes.captions[1:] + scenes.captions[:1]
    task = evaluation.report["tasks"]["text->image"]
    for kind in ("colour", "shape"):
        model, floor, ceiling = (
            by_hand(drawn, scenes.captions, kind),
            by_hand(drawn, rolled, kind),
            by_hand(through, scenes.captions, kind),
        )
        for index, score in enumerate(("precision", "recall")):
            entry = task[f"{kind}_{score}"]
            assert (entry["model"], entry["baseline"], entry["tokenizer_ceiling"]) == (
                model[index],
                floor[index],
                ceiling[index],
            )
    real = by_hand(judge.judge(scenes.rgb), scenes.captions, "shape")
    assert evaluation.report["judge_on_real_images"]["shape_precision"] == real[0]


def test_every_drawn_block_is_well_formed(evaluated):
    run, _, evaluation = evaluated
    assert evaluation.report["well_formed_image_blocks"] == 1.0
    layout = run.layout
    good = run.text_to_image(["a red cube"], (64, 64), SamplingSettings(cfg_scale=1.0)).turns[0]
    assert is_image_turn(good, 8, 8, layout)
    assert not is_image_turn(good, 8, 4, layout)  # another size
    assert not is_image_turn(good[:-1], 8, 8, layout)  # no <|eot|>
    broken = good.clone()
    broken[10] = layout.end_of_turn  # a non-code inside the block
    assert not is_image_turn(broken, 8, 8, layout)


def test_the_table_names_every_task_and_the_judge(evaluated):
    _, _, evaluation = evaluated
    table = format_report(evaluation.report)
    needles = ("image->caption", "text->image", "colour_recall (higher)", "tokenizer ceiling", "judge on the real")
    for needle in (*needles, "well-formed image blocks: 100.0%"):
        assert needle in table


def eval_flags(lumina_run, judge_cache, out):
    return [
        "eval", "--model", str(lumina_run["run"]), "--num-scenes", "2", "--batch-size", "2",
        "--baseline-scenes", "4", "--max-new-tokens", "4", "--judge-scenes", "16", "--judge-steps", "3",
        "--judge-cache", str(judge_cache), "--rows", "2", "--out", str(out),
    ]  # fmt: skip


def test_polymodal_eval_prints_the_table_and_writes_the_report_and_sheet(lumina_run, judge_cache, tmp_path, capsys):
    assert main(eval_flags(lumina_run, judge_cache, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "image->caption" in out and "text->image" in out and "wrote" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["num_scenes"] == 2 and set(report["tasks"]) == {"image->caption", "text->image"}
    assert report["settings"]["judge"]["size"] == 64
    sheet = Image.open(tmp_path / "samples.png")
    assert sheet.width > 3 * 192 and 2 * 192 < sheet.height < 3 * 192 + 200  # three columns, two scenes


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-scenes", "1"], "num_scenes must be >= 2"),
        (["--seed", "0"], "training seed"),
        (["--batch-size", "0"], "must be >= 1"),
        (["--judge-steps", "0"], "must be positive"),
    ],
)
def test_bad_input_prints_one_error_line(lumina_run, judge_cache, tmp_path, capsys, flags, message):
    assert main([*eval_flags(lumina_run, judge_cache, tmp_path), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
