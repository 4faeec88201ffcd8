"""``load_run`` on a 4M run: the FourMRun it returns, its generation-batch helper and ``generate``."""

import pytest
import torch
from PIL import Image
from tiny_image_tokenizers import export_tiny_tokenizer
from torchvision.transforms.v2 import functional as F
from trained_runs import checkpointed_run

from polymodal import load_run
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.families.fourm.api import FourMRun
from polymodal.families.fourm.generate.inputs import full_input, generation_batch, text_input, text_prompt_target
from polymodal.families.fourm.generate.sampler import GenerationSampler
from polymodal.families.fourm.generate.schedules import schedule_from_dict
from polymodal.families.fourm.samples import normalise_rgb
from polymodal.tokenizers.carried import copy_tokenizers
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import train_wordpiece

SETTINGS = dict(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fourm_modalities):
    base = tmp_path_factory.mktemp("api")
    model = {"_target_": "polymodal.families.fourm.model.build_fourm", "size": "tiny", "modalities": fourm_modalities}
    run = checkpointed_run(base / "run", {**model, **SETTINGS})
    vocab = fourm_modalities["overrides"]["caption"]["vocab_size"]
    text = save_tokenizer(train_wordpiece(synthetic_scene_texts(20), vocab), base / "wordpiece.json")
    depth = export_tiny_tokenizer(base / "tok-depth", "depth")
    rgb = export_tiny_tokenizer(base / "tok-rgb", "rgb")
    copy_tokenizers({"text": text, "tok_depth@32": depth, "tok_rgb@32": rgb}, run / "tokenizers")
    return run


def pil_images(count: int, height: int = 40, width: int = 48) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(3)
    arrays = torch.randint(0, 256, (count, height, width, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(array.numpy()) for array in arrays]


def test_load_run_gives_the_family_run_with_its_tokenizers(run_dir):
    run = load_run(run_dir)
    assert isinstance(run, FourMRun) and not run.model.training
    assert sorted(run.tokenizers) == ["text", "tok_depth@32", "tok_rgb@32"]
    assert run.config.model.size == "tiny"


def test_the_batch_helper_builds_what_the_inputs_module_builds_by_hand(run_dir):
    run = load_run(run_dir)
    images = pil_images(2)
    captions = ["a red cube", "two small spheres"]
    batch = run.generation_batch({"rgb@32": images, "tok_rgb@32": images, "caption": captions}, ["tok_depth@32"])

    pixels = torch.stack(  # centre square, resized: as evaluation crops a scene
        [F.resize(F.center_crop(F.to_dtype(F.to_image(i), torch.float32, scale=True), 40), [32, 32]) for i in images]
    )
    modalities = run.modalities
    with torch.no_grad():
        codes = run.tokenizers["tok_rgb@32"].encode(pixels)
    by_hand = generation_batch(
        modalities,
        {
            "rgb@32": full_input(modalities["rgb@32"], normalise_rgb(pixels)),
            "tok_rgb@32": full_input(modalities["tok_rgb@32"], codes),
            "caption": text_input(modalities["caption"], run.tokenizers["text"], captions),
        },
        ["tok_depth@32"],
        batch_size=2,
    )
    assert batch.keys() == by_hand.keys()
    for name, entry in by_hand.items():
        for key, value in entry.items():
            assert torch.allclose(batch[name][key].float(), value.float(), atol=1e-6), (name, key)

    prompt = run.generation_batch({"caption": ["a red [S_1]"]}, ["caption"])["caption"]
    expected = text_prompt_target(modalities["caption"], run.tokenizers["text"], ["a red [S_1]"])
    assert all(torch.equal(prompt[key], expected[key]) for key in expected)
    codes_given = run.generation_batch({"tok_rgb@32": codes}, ["caption"])["tok_rgb@32"]["tensor"]
    assert torch.equal(codes_given, codes.reshape(2, -1))


def test_generate_decodes_what_the_sampler_makes_from_that_batch(run_dir):
    run = load_run(run_dir)
    images = pil_images(2)
    out = run.generate({"rgb@32": images}, ["tok_depth@32", "caption"], seed=5, decoding_steps=2)
    assert out["tok_depth@32"].shape == (2, 1, 32, 32) and len(out["caption"]) == 2

    schedule = schedule_from_dict(
        {"cond_domains": ["rgb@32"], "target_domains": ["tok_depth@32", "caption"], "decoding_steps": 2},
        run.modalities,
    )
    batch = run.generation_batch({"rgb@32": images}, schedule.targets)
    generated = GenerationSampler(run.model).generate(batch, schedule, torch.Generator().manual_seed(5))
    with torch.no_grad():
        depth = run.tokenizers["tok_depth@32"].decode(generated["tok_depth@32"]["tensor"].reshape(2, 4, 4))
    assert torch.equal(out["tok_depth@32"], depth)
    caption = generated["caption"]
    ids = [row[selected].tolist() for row, selected in zip(caption["tensor"], caption["is_input"], strict=True)]
    assert out["caption"] == [run.tokenizers["text"].decode(row) for row in ids]


def test_bad_input_is_named(run_dir, tmp_path):
    run = load_run(run_dir)
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        run.generation_batch({"depth": pil_images(1)}, ["caption"])
    with pytest.raises(ValueError, match="give at least one input"):
        run.generation_batch({}, ["caption"])
    with pytest.raises(ValueError, match="share one batch size"):
        run.generation_batch({"rgb@32": pil_images(2), "caption": ["one caption"]}, ["tok_depth@32"])
    bare = load_run(checkpointed_run(tmp_path / "bare", dict(run.config.model)))  # a run that carries nothing
    with pytest.raises(KeyError, match="carries no tokenizer 'text'"):
        bare.generation_batch({"caption": ["a cube"]}, ["tok_depth@32"])
