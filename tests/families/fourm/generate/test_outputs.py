"""Decoded generations: a chained rgb -> tok_depth -> caption run decoded by tiny tokenizers into a PNG and JSON."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.synth.scene import SHAPES
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.families.fourm.generate.inputs import full_input, generation_batch
from polymodal.families.fourm.generate.outputs import (
    check_decoders,
    decode_generations,
    generations_record,
    parse_det_text,
    write_generation_json,
    write_generation_png,
)
from polymodal.families.fourm.generate.sampler import GenerationSampler
from polymodal.families.fourm.generate.schedules import TargetSettings, build_schedule
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
    png = write_generation_png(tmp_path / "generations.png", decoded)
    with Image.open(png) as image:
        assert image.size[0] > 3 * 160 and image.size[1] > 2 * 160
    path = write_generation_json(tmp_path / "generations.json", generations_record(decoded, {"seed": 0}))
    record = json.loads(path.read_text())
    assert record["seed"] == 0 and len(record["samples"]) == 2
    assert record["samples"][1]["tok_depth@32"]["ids"] == generated["tok_depth@32"]["tensor"][1].tolist()
    assert record["samples"][0]["caption"]["generated"] and "rgb@32" not in record["samples"][0]


def test_det_text_is_drawn_as_boxes_on_the_rgb(model, text_tokenizer, tmp_path):
    shape = sorted(SHAPES)[0]
    text = f"v0=0 v1=0 v2=499 v3=999 {shape} v0=10 v1=10 v2=5 v3=20 {shape} v0=3 {shape}"
    assert parse_det_text(text) == [(shape, (0.0, 0.0, 499 / 999, 1.0))]  # no-area and incomplete boxes skipped
    ids = torch.tensor([text_tokenizer.encode(text).ids])
    batch = {
        "rgb@32": full_input(model.modalities["rgb@32"], torch.zeros(1, 3, 32, 32)),
        "det": full_input(model.modalities["det"], ids[:, : model.modalities["det"].max_tokens]),
    }
    decoded = decode_generations(batch, model.modalities, ["det"], {}, text_tokenizer)
    png = write_generation_png(tmp_path / "det.png", decoded)
    with Image.open(png) as image:
        det_cell = image.convert("RGB").crop((6 + 166, 22, 6 + 166 + 160, 22 + 160))
        assert len(np.unique(np.asarray(det_cell).reshape(-1, 3), axis=0)) > 1  # boxes drawn on the uniform rgb


def test_missing_or_mismatched_decoders_are_clear_errors(model, text_tokenizer):
    with pytest.raises(ValueError, match="no image tokenizer given for the target 'tok_depth@32'"):
        check_decoders(["tok_depth@32"], model.modalities, {}, text_tokenizer)
    with pytest.raises(ValueError, match="--text-tokenizer"):
        check_decoders(["caption"], model.modalities, {}, None)
    with pytest.raises(ValueError, match="32 codes"):
        check_decoders(["tok_depth@32"], model.modalities, {"tok_depth@32": tiny_tokenizer("depth", 32)}, None)
    with pytest.raises(ValueError, match="not a token-grid modality"):
        check_decoders([], model.modalities, {"rgb@32": tiny_tokenizer("rgb")}, None)
