"""4M evaluation on held-out scenes: metrics against naive references, the whole run on a tiny random 4M with
tiny random tokenizers, skipped tasks, bad input, and ``polymodal eval-4m`` on a run directory."""

import copy
import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from polymodal.checkpoint.dcp import Checkpointer
from polymodal.checkpoint.weights import export_weights
from polymodal.cli import main
from polymodal.config import instantiate
from polymodal.data.synth.scene import SHAPES
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.distributed.env import DistEnv
from polymodal.families.fourm.evaluate.metrics import abs_rel_error, log_rmse, semseg_miou
from polymodal.families.fourm.evaluate.report import format_report, write_evaluation
from polymodal.families.fourm.evaluate.settings import EvalSettings
from polymodal.families.fourm.evaluate.tasks import TASKS, evaluate_fourm, scenes_of
from polymodal.families.fourm.model import build_fourm
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import train_wordpiece

SIZE = 32
SETTINGS = EvalSettings(batch_size=2, baseline_scenes=3, rgb_steps=2)
FOURM_SETTINGS = dict(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
TOKENIZER = {
    "_target_": "polymodal.tokenizers.image.tokenizer.build_image_tokenizer",
    "downsample": 8,
    "channels": [8, 8, 8, 8],
    "num_classes": len(SHAPES) + 1,
    "quantizer": {"_target_": "polymodal.tokenizers.image.quantizers.VectorQuantizer", "dim": 8, "codebook_size": 64},
}


@pytest.fixture(scope="module")
def modalities(fourm_modalities):
    """The generation tests' tiny modalities plus ``tok_semseg@32``."""
    config = copy.deepcopy(fourm_modalities)
    config["names"].append(f"tok_semseg@{SIZE}")
    config["overrides"][f"tok_semseg@{SIZE}"] = {"vocab_size": 64, "patch_size": 8}
    return config


@pytest.fixture(scope="module")
def fourm(modalities):
    torch.manual_seed(0)
    return build_fourm("tiny", modalities, **FOURM_SETTINGS).eval()


@pytest.fixture(scope="module")
def image_tokenizers():
    tokenizers = {}
    for modality in ("rgb", "depth", "semseg"):
        torch.manual_seed(0)
        tokenizers[f"tok_{modality}@{SIZE}"] = instantiate(OmegaConf.create({**TOKENIZER, "modality": modality}))
    return {name: tokenizer.eval() for name, tokenizer in tokenizers.items()}


@pytest.fixture(scope="module")
def text_tokenizer(fourm):
    return train_wordpiece(synthetic_scene_texts(20), fourm.modalities["caption"].vocab_size)


@pytest.fixture(scope="module")
def evaluation(fourm, image_tokenizers, text_tokenizer):
    return evaluate_fourm(fourm, image_tokenizers, text_tokenizer, num_scenes=4, seed=10_000, settings=SETTINGS)


def test_depth_errors_match_naive_loops():
    torch.manual_seed(0)
    predicted, target = torch.rand(2, 1, 3, 4) * 10, torch.rand(2, 1, 3, 4) * 10 + 0.5
    pairs = list(zip(predicted.flatten().tolist(), target.flatten().tolist(), strict=True))
    assert abs_rel_error(predicted, target) == pytest.approx(sum(abs(p - t) / t for p, t in pairs) / len(pairs))
    squares = [(math.log(max(p, 1e-3)) - math.log(t)) ** 2 for p, t in pairs]
    assert log_rmse(predicted, target) == pytest.approx(math.sqrt(sum(squares) / len(squares)), rel=1e-5)
    assert abs_rel_error(target, target) == 0.0 and log_rmse(target, target) == 0.0
    with pytest.raises(ValueError, match="must be > 0"):
        abs_rel_error(predicted, target - 10)
    with pytest.raises(ValueError, match="shapes differ"):
        log_rmse(predicted, target[:1])


def test_miou():
    target = torch.tensor([[0, 0, 1, 1]])
    assert semseg_miou(target, target) == 1.0
    assert semseg_miou(torch.zeros_like(target), target) == pytest.approx(0.5 / 2)  # IoU 2/4 and 0/2


def test_whole_evaluation_reports_every_task_beside_its_baseline(evaluation):
    report = evaluation.report
    assert set(report["tasks"]) == set(TASKS) and report["skipped"] == {}
    assert report["image_size"] == SIZE and report["seed"] == 10_000
    scenes, training = scenes_of(10_000, 4, SIZE, "held-out"), scenes_of(0, SETTINGS.baseline_scenes, SIZE, "baseline")
    mean_map = training.depth.mean(0, keepdim=True).expand_as(scenes.depth)
    depth = report["tasks"]["rgb->depth"]
    assert depth["abs_rel"]["baseline"] == pytest.approx(abs_rel_error(mean_map, scenes.depth))
    assert depth["log_rmse"]["better"] == "lower" and depth["abs_rel"]["model"] >= 0
    majority = int(torch.bincount(training.semseg.flatten()).argmax())
    expected_miou = semseg_miou(torch.full_like(scenes.semseg, majority), scenes.semseg)
    assert report["tasks"]["rgb->semseg"]["miou"]["baseline"] == pytest.approx(expected_miou)
    caption = report["tasks"]["rgb->caption"]
    assert {f"{k}_{s}" for k in ("colour", "shape") for s in ("precision", "recall")} <= set(caption)
    assert caption["colour_precision"]["baseline"] is not None and caption["shape_recall"]["baseline"] is not None
    agreement = report["tasks"]["caption->rgb"]["captioned_shapes_drawn"]
    assert {"model", "baseline", "real_rgb_reference"} <= set(agreement)
    assert report["tasks"]["caption->rgb"]["drawn_shapes_captioned"]["baseline"] is not None
    for entry in (depth["abs_rel"], agreement):
        if entry["model"] is not None and entry["baseline"] is not None:
            lower = entry["model"] < entry["baseline"]
            assert entry["model_wins"] == (lower if entry["better"] == "lower" else entry["model"] > entry["baseline"])
    assert [len(column) for column in evaluation.columns] == [4] * 8


def test_samples_grid_puts_the_rendered_ground_truth_beside_each_prediction(evaluation):
    assert [(column.title, column.view) for column in evaluation.columns] == [
        ("rgb (input)", "rgb"),
        ("depth predicted from rgb", "depth"),
        ("depth (ground truth)", "depth"),
        ("semseg predicted from rgb", "semseg"),
        ("semseg (ground truth)", "semseg"),
        ("caption predicted from rgb", "text"),
        ("caption (ground truth)", "text"),
        ("rgb predicted from caption", "rgb"),  # its ground truth is the input column
    ]
    scenes = scenes_of(10_000, 4, SIZE, "held-out")
    assert torch.equal(evaluation.columns[2].values, scenes.depth) and evaluation.columns[6].values == scenes.captions


def test_outputs_are_json_png_and_a_table(evaluation, tmp_path):
    report_path, png = write_evaluation(tmp_path, evaluation, rows=2)
    assert json.loads(report_path.read_text()) == json.loads(json.dumps(evaluation.report))
    with Image.open(png) as image:
        assert image.size[0] > 8 * 160 and 2 * 160 < image.size[1] < 3 * 240
    table = format_report(evaluation.report)
    assert all(task in table for task in TASKS) and "abs_rel" in table and "real rgb" in table


def test_missing_tokenizers_and_text_tokenizer_skip_tasks_with_reasons(fourm, image_tokenizers):
    only_depth = {f"tok_depth@{SIZE}": image_tokenizers[f"tok_depth@{SIZE}"]}
    evaluation = evaluate_fourm(fourm, only_depth, None, num_scenes=2, seed=7, settings=SETTINGS)
    skipped = evaluation.report["skipped"]
    assert set(evaluation.report["tasks"]) == {"rgb->depth"}
    assert skipped["rgb->semseg"] == f"needs a tok_semseg@{SIZE} tokenizer"
    assert skipped["rgb->caption"] == "needs the text tokenizer"
    assert "a tok_rgb@32 tokenizer" in skipped["caption->rgb"] and "skipped rgb->caption" in format_report(
        evaluation.report
    )


def test_bad_input(fourm, image_tokenizers, text_tokenizer):
    with pytest.raises(ValueError, match="is the training seed"):
        evaluate_fourm(fourm, image_tokenizers, text_tokenizer, num_scenes=2, seed=0)
    with pytest.raises(ValueError, match="num_scenes must be >= 2"):
        evaluate_fourm(fourm, image_tokenizers, text_tokenizer, num_scenes=1)
    with pytest.raises(ValueError, match="no task can run at 64 px"):
        evaluate_fourm(fourm, image_tokenizers, text_tokenizer, num_scenes=2, image_size=64)
    with pytest.raises(ValueError, match="presence_fraction"):
        evaluate_fourm(fourm, {}, text_tokenizer, num_scenes=2, settings=EvalSettings(presence_fraction=0))


def _config_yaml(model_config):
    return OmegaConf.to_yaml(OmegaConf.create({"model": model_config}))


def test_cli_on_a_run_dir(modalities, tmp_path, capsys):
    config_yaml = _config_yaml(
        {
            "_target_": "polymodal.families.fourm.model.build_fourm",
            "size": "tiny",
            "modalities": modalities,
            **FOURM_SETTINGS,
        }
    )
    torch.manual_seed(0)
    model = instantiate(OmegaConf.create(config_yaml).model)
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    Checkpointer(tmp_path / "run" / "checkpoints", keep_last=1, env=env).save(1, model, optimizer, {}, config_yaml)
    flags = []
    for modality in ("rgb", "depth", "semseg"):
        tokenizer_yaml = _config_yaml({**TOKENIZER, "modality": modality})
        directory = tmp_path / f"tok-{modality}"
        export_weights(instantiate(OmegaConf.create(tokenizer_yaml).model), directory, tokenizer_yaml)
        flags += ["--tokenizer", f"tok_{modality}@{SIZE}={directory}"]
    wordpiece = train_wordpiece(synthetic_scene_texts(20), model.modalities["caption"].vocab_size)
    text = save_tokenizer(wordpiece, tmp_path / "wp.json")
    common = ["eval-4m", "--model", str(tmp_path / "run"), "--text-tokenizer", str(text)]
    common += ["--out", str(tmp_path / "out")]
    settings = ["--num-scenes", "2", "--baseline-scenes", "2", "--rgb-steps", "2", "--rows", "1"]
    assert main([*common, *flags, *settings]) == 0
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(report["tasks"]) == set(TASKS) and report["model"] == str(tmp_path / "run")
    assert (tmp_path / "out" / "samples.png").stat().st_size > 0
    printed = capsys.readouterr()
    assert "rgb->semseg" in printed.out
    for line in ("rendering 2 held-out scenes: 2/2", "rendering 2 baseline scenes: 2/2", "evaluating 2 scenes: 1/1"):
        assert line in printed.err  # progress, as lines off a terminal
    assert main([*common, "--num-scenes", "2", "--seed", "0"]) == 2
    assert "is the training seed" in capsys.readouterr().err
