"""The 4M pipeline of `make demo`, end to end through the CLI with the shipped configs, at toy sizes:
synthetic scenes -> four image tokenizers -> WordPiece -> pre-tokenized shards -> 4M -> generation -> evaluation."""

import json
from pathlib import Path

import pytest
import torch

from polymodal.cli import main
from polymodal.data.synth.texts import synthetic_scene_texts

TOKENIZERS = ("rgb", "depth", "normal", "semseg")
QUICK_RUN = [
    "experiment.total_steps=8",
    "constants.warmup_steps=2",
    "experiment.log_every=4",
    "experiment.eval_every=8",
    "experiment.eval_steps=1",
    "experiment.ckpt_every=8",
    "experiment.wandb.enabled=false",
    "experiment.tensorboard=false",
]


def run(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    scenes, cache = tmp_path / "scenes", tmp_path / "cache"
    run("synth", "--out", str(scenes), "--format", "shards", "--num-samples", "64", "--samples-per-shard", "16")
    for modality in TOKENIZERS:
        run(
            "train",
            "--config",
            f"configs/tokenizers/{modality}_tiny.yaml",
            f"constants.data_root={scenes}",
            f"experiment.output_dir={tmp_path}/tokenizer-{modality}",
            f"+data.cache_dir={cache}",
            *QUICK_RUN,
        )
    corpus = tmp_path / "scene_texts.txt"
    corpus.write_text("\n".join(synthetic_scene_texts(200)))
    wordpiece = tmp_path / "wordpiece.json"
    run("tokenizer", "train-text", "--kind", "wordpiece", str(corpus), "--output", str(wordpiece))
    tokenizer_args = [f"--tokenizer={m}={tmp_path}/tokenizer-{m}" for m in TOKENIZERS]
    run("pretokenize-4m", "--source", str(scenes), "--n-crops", "2", "--cache-dir", str(cache), *tokenizer_args)

    fourm = tmp_path / "fourm"
    run(
        "train",
        "--config",
        "configs/fourm/tiny.yaml",
        f"constants.scenes={scenes}",
        f"constants.text_tokenizer={wordpiece}",
        "constants.batch_size=8",
        "constants.num_workers=0",
        f"data.cache_dir={cache}",
        f"experiment.output_dir={fourm}",
        *QUICK_RUN,
    )
    carried = sorted(path.name for path in (fourm / "tokenizers").iterdir())
    assert carried == sorted(["text.json", *(f"tok_{m}@64" for m in TOKENIZERS)])  # pretokenize-4m recorded them
    folders = "rgb,tok_rgb,tok_depth,tok_normal,tok_semseg,caption,det,crop_settings"
    shards = f"{scenes}/[{folders}]/shard-{{00003..00003}}.tar"
    for schedule in ("rgb2all_tiny", "caption2rgb_tiny"):  # with the tokenizers the run carries
        run(
            "generate",
            f"--model={fourm}",
            f"--schedule=configs/fourm/generation/{schedule}.yaml",
            f"--data={shards}",
            "--num-samples=2",
            f"--cache-dir={cache}",
            f"--out={tmp_path}/{schedule}",
        )
        assert (tmp_path / schedule / "generations.png").stat().st_size > 5_000
    image_tokenizers = [f"--tokenizer=tok_{m}@64={tmp_path}/tokenizer-{m}" for m in TOKENIZERS]
    run(
        "eval",
        f"--model={fourm}",
        *image_tokenizers,
        f"--text-tokenizer={wordpiece}",
        "--num-scenes=4",
        "--baseline-scenes=4",
        f"--out={tmp_path}/eval",
    )
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report and (tmp_path / "eval" / "samples.png").stat().st_size > 5_000
