"""Decoded generations: a chained rgb -> tok_depth -> caption run decoded by tiny tokenizers into grid columns (a
PNG) and JSON."""

import json

import pytest
import torch
from PIL import Image

from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.families.fourm.generate.inputs import full_input, generation_batch
from polymodal.families.fourm.generate.outputs import (
    check_decoders,
    decode_generations,
    generation_columns,
    generations_record,
    write_generation_json,
)
from polymodal.families.fourm.generate.sampler import GenerationSampler
from polymodal.families.fourm.generate.schedules import TargetSettings, build_schedule
from polymodal.families.fourm.grid.sheet import write_grid_png
from polymodal.tokenizers.image.quantizers import VectorQuantizer
from polymodal.tokenizers.image.tokenizer import build_image_tokenizer
from polymodal.tokenizers.text.wordpiece import train_wordpiece


@pytest.fixture(scope="module")
def text_tokenizer(model):
    return train_wordpiece(synthetic_scene_texts(20), model.modalities["caption"].vocab_size)


def tiny_tokenizer(modality, codebook=64):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(dim=8, codebook_size=codebook)
    return build_image_tokenizer(modality, quantizer, downsample=8, channels=[8, 8, 8, 8], num_classes=5).eval()


def test_chain_rgb_to_depth_to_caption_writes_png_and_json(model, text_tokenizer, tmp_path):
    schedule = build_schedule(
        ["rgb@32"],
        [TargetSettings("tok_depth@32", "roar", steps=2, cfg_scale=2.0), TargetSettings("caption", temperature=0.5)],
        model.modalities,
        cfg_grow_conditioning=True,
    )
    rgb = torch.rand(2, 3, 32, 32)
    inputs = {"rgb@32": full_input(model.modalities["rgb@32"], rgb)}
    batch = generation_batch(model.modalities, inputs, schedule.targets, 2, "cpu", ["rgb@32"])
    generated = GenerationSampler(model).generate(batch, schedule, torch.Generator().manual_seed(0))
    tokenizers = {"tok_depth@32": tiny_tokenizer("depth")}
    check_decoders(schedule.targets, model.modalities, tokenizers, text_tokenizer)
    decoded = decode_generations(generated, model.modalities, schedule.targets, tokenizers, text_tokenizer)
    by_name = {item.name: item for item in decoded}
    assert by_name["tok_depth@32"].images.shape == (2, 1, 32, 32) and by_name["tok_depth@32"].view == "depth"
    assert by_name["rgb@32"].images.shape == (2, 3, 32, 32) and not by_name["rgb@32"].generated
    caption_ids = generated["caption"]["tensor"][0][generated["caption"]["is_input"][0]].tolist()
    assert by_name["caption"].texts[0] == text_tokenizer.decode(caption_ids)
    columns = generation_columns(decoded, schedule.targets, schedule.cond_domains)
    assert [(c.title, c.view) for c in columns] == [
        ("rgb (input)", "rgb"),
        ("depth predicted from rgb", "depth"),
        ("caption predicted from rgb, depth", "text"),  # chained: the depth generated first is an input too
    ]
    png = write_grid_png(tmp_path / "generations.png", columns)
    with Image.open(png) as image:
        assert image.size[0] > 3 * 160 and image.size[1] > 2 * 160
    path = write_generation_json(tmp_path / "generations.json", generations_record(decoded, {"seed": 0}))
    record = json.loads(path.read_text())
    assert record["seed"] == 0 and len(record["samples"]) == 2
    assert record["samples"][1]["tok_depth@32"]["ids"] == generated["tok_depth@32"]["tensor"][1].tolist()
    assert record["samples"][0]["caption"]["generated"] and "rgb@32" not in record["samples"][0]


def test_ground_truth_stands_beside_each_prediction_the_sample_has(model, text_tokenizer):
    modalities = model.modalities
    rgb = {"rgb@32": full_input(modalities["rgb@32"], torch.rand(2, 3, 32, 32))}
    depth_codes = {"tok_depth@32": full_input(modalities["tok_depth@32"], torch.randint(64, (2, 16)))}
    det_ids = torch.tensor([text_tokenizer.encode("v0=0 v1=0 v2=499 v3=999 cube").ids] * 2)
    det = {"det": full_input(modalities["det"], det_ids)}
    targets = ["tok_depth@32", "det"]
    tokenizers = {"tok_depth@32": tiny_tokenizer("depth")}
    decoded = decode_generations({**rgb, **depth_codes, **det}, modalities, targets, tokenizers, text_tokenizer)
    truths = decode_generations(depth_codes, modalities, [], tokenizers, text_tokenizer)  # the shards hold depth only
    columns = generation_columns(decoded, targets, ["rgb@32"], truths)
    assert [(c.title, c.view) for c in columns] == [
        ("rgb (input)", "rgb"),
        ("depth predicted from rgb", "depth"),
        ("depth (ground-truth tokens)", "depth"),
        ("det predicted from rgb, depth", "det"),
    ]
    assert torch.equal(columns[2].values, truths[0].images)
    assert columns[3].values == ["v0=0 v1=0 v2=499 v3=999 cube"] * 2  # det strings: the panel decodes them
    with_det_truth = generation_columns(decoded, targets, ["rgb@32"], [*truths, decoded[2]])
    assert with_det_truth[-1].title == "det (ground truth)"


def test_missing_or_mismatched_decoders_are_clear_errors(model, text_tokenizer):
    with pytest.raises(ValueError, match="no image tokenizer given for the target 'tok_depth@32'"):
        check_decoders(["tok_depth@32"], model.modalities, {}, text_tokenizer)
    with pytest.raises(ValueError, match="--text-tokenizer"):
        check_decoders(["caption"], model.modalities, {}, None)
    with pytest.raises(ValueError, match="32 codes"):
        check_decoders(["tok_depth@32"], model.modalities, {"tok_depth@32": tiny_tokenizer("depth", 32)}, None)
    with pytest.raises(ValueError, match="not a token-grid modality"):
        check_decoders([], model.modalities, {"rgb@32": tiny_tokenizer("rgb")}, None)
