"""4M training data: pre-tokenized synthetic shards -> aligned samples (one crop row for every modality, boxes and
pixels cropped like that row, text ids) -> raw batches -> masked batches that are resumable and worker-independent."""

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tiny_image_tokenizers import CODEBOOK_SIZE, export_tiny_tokenizer
from torchvision.transforms.v2 import functional as F

from polymodal.config import instantiate, load_config
from polymodal.data.multimodal.loader import sample_generator
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.skips import SampleError
from polymodal.data.synth.scene import SHAPES
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.data.synth.writers import write_shards
from polymodal.families.fourm.data import FourMData, fourm_alphas, fourm_registry
from polymodal.families.fourm.masking.largest import largest_token_counts
from polymodal.families.fourm.pretokenize import CropOptions, pretokenize_4m
from polymodal.families.fourm.samples import IMAGENET_MEAN, IMAGENET_STD, FourMSample, crop_boxes, text_ids
from polymodal.tokenizers.carried import record_image_tokenizer
from polymodal.tokenizers.loading import load_image_tokenizer
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import EOS_ID, PAD_ID, train_wordpiece

SIZE = 32
N_CROPS = 4
TEXT_VOCAB = 4 + 200 + 4 * 1000 + len(SHAPES) + 300
FOLDERS = "[rgb,tok_rgb,tok_depth,caption,det,crop_settings]"
IN_DOMAINS = ["rgb@32", "tok_rgb@32", "tok_depth@32", "caption", "det"]
OUT_DOMAINS = ["tok_rgb@32", "tok_depth@32", "caption", "det"]
OVERRIDES = {
    "rgb@32": {"patch_size": 8},
    "tok_rgb@32": {"vocab_size": CODEBOOK_SIZE, "patch_size": 8},
    "tok_depth@32": {"vocab_size": CODEBOOK_SIZE, "patch_size": 8},
    "caption": {"vocab_size": TEXT_VOCAB, "max_tokens": 24},
    "det": {"vocab_size": TEXT_VOCAB, "max_tokens": 32},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """12 scenes in 2 shards, pre-tokenized (rgb, depth; 4 crop rows each), and a WordPiece tokenizer file."""
    base = tmp_path_factory.mktemp("fourm")
    root = base / "scenes"
    write_shards(root, num_samples=12, samples_per_shard=6, size=SIZE, modalities=("rgb", "depth", "caption", "det"))
    tokenizers = {m: load_image_tokenizer(export_tiny_tokenizer(base / f"tok-{m}", m)) for m in ("rgb", "depth")}
    pretokenize_4m(root, tokenizers, options=CropOptions(n_crops=N_CROPS, image_size=SIZE, seed=5), cache_dir=base)
    text_tokenizer = train_wordpiece(synthetic_scene_texts(40), TEXT_VOCAB)
    tokenizer_path = save_tokenizer(text_tokenizer, base / "wordpiece.json")
    alphas_path = base / "alphas.yaml"
    alphas = {name: {"input_alphas": [1000.0, 0.5], "target_alphas": [0.0, 0.5]} for name in IN_DOMAINS}
    alphas.update({name: {"input_alphas": [0.0, 0.5], "target_alphas": [0.5, 0.5]} for name in OUT_DOMAINS})
    alphas["rgb@32"] = {"input_alphas": [1000.0, 0.5], "target_alphas": [0.0, 0.0]}
    alphas_path.write_text(yaml.safe_dump(alphas))
    return {"root": root, "tokenizer": text_tokenizer, "tokenizer_path": str(tokenizer_path), "alphas": alphas_path}


def pattern(root: Path, folders: str = FOLDERS, shards: str = "{00000..00001}") -> str:
    return f"{root}/{folders}/shard-{shards}.tar"


def small_registry():
    return fourm_registry(IN_DOMAINS, OUT_DOMAINS, OVERRIDES)


def raw_samples(world) -> MultimodalShards:
    folders = ["rgb", "tok_rgb", "tok_depth", "caption", "det", "crop_settings"]
    return MultimodalShards(pattern(world["root"]), modalities=folders, cache_dir=world["root"].parent)


def stored_arrays(root: Path, folder: str) -> list[torch.Tensor]:
    """Every sample's array of a tok_/crop_settings folder, in sample-id order, read straight from the tars."""
    arrays = []
    for shard in sorted((root / folder).glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            arrays += [torch.from_numpy(np.load(io.BytesIO(tar.extractfile(m).read()))) for m in tar]
    return arrays


def normalised(pixels_01: torch.Tensor) -> torch.Tensor:
    return (pixels_01 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_train_sample_takes_one_crop_row_for_every_modality(world):
    shards, prepare = raw_samples(world), FourMSample(small_registry(), world["tokenizer"], train=True)
    codes = {folder: stored_arrays(world["root"], folder) for folder in ("tok_rgb", "tok_depth", "crop_settings")}
    rows_used = set()
    for sample_id in range(len(shards)):
        raw = shards[sample_id]
        generator = sample_generator(3, 1, sample_id)
        out = prepare(raw, generator)
        row = int(torch.randint(N_CROPS, (), generator=sample_generator(3, 1, sample_id)))  # the first draw
        rows_used.add(row)
        assert out["tok_rgb@32"].dtype == torch.int64 and out["tok_rgb@32"].shape == (16,)
        assert torch.equal(out["tok_rgb@32"], codes["tok_rgb"][sample_id][row].long())
        assert torch.equal(out["tok_depth@32"], codes["tok_depth"][sample_id][row].long())
        top, left, height, width, flip = codes["crop_settings"][sample_id][row].tolist()
        crop = raw["rgb"][:, top : top + height, left : left + width]  # naive reference: slice, flip, resize
        crop = crop.flip(-1) if flip else crop
        expected = F.resize(crop, [SIZE, SIZE], antialias=True).float() / 255.0  # resized as uint8, like tokenized
        assert out["rgb@32"].shape == (3, SIZE, SIZE)
        torch.testing.assert_close(out["rgb@32"], normalised(expected), atol=2e-5, rtol=0)
    assert len(rows_used) > 1  # the rows really are drawn


def test_eval_sample_takes_row_0_and_caption_0(world):
    shards, prepare = raw_samples(world), FourMSample(small_registry(), world["tokenizer"], train=False)
    for sample_id in (0, 7):
        raw = shards[sample_id]
        out = prepare(raw, sample_generator(0, 0, sample_id))
        assert raw["crop_settings"][0].tolist() == [0, 0, SIZE, SIZE, 0]
        assert torch.equal(out["tok_rgb@32"], raw["tok_rgb"][0].long())
        torch.testing.assert_close(out["rgb@32"], normalised(raw["rgb"].float() / 255.0), atol=1e-6, rtol=0)
        assert torch.equal(out["caption"], text_ids(world["tokenizer"], raw["caption"][0], 24))


def naive_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    ids = (tokenizer.encode(text).ids + [EOS_ID])[:max_tokens]
    return ids + [PAD_ID] * (max_tokens - len(ids))


def test_caption_ids_round_trip_through_the_tokenizer(world):
    tokenizer, shards = world["tokenizer"], raw_samples(world)
    prepare = FourMSample(small_registry(), tokenizer, train=True)
    picked = set()
    for sample_id in range(len(shards)):
        captions = shards[sample_id]["caption"]
        ids = prepare(shards[sample_id], sample_generator(1, 0, sample_id))["caption"]
        assert ids.dtype == torch.int64 and ids.shape == (24,)
        matches = [i for i, caption in enumerate(captions) if naive_ids(tokenizer, caption, 24) == ids.tolist()]
        assert len(matches) >= 1
        if EOS_ID in ids.tolist():  # not truncated: decoding gives the caption back (BERT spacing aside)
            decoded = tokenizer.decode(ids.tolist())
            assert decoded.replace(" ", "") == captions[matches[0]].replace(" ", "")
        picked.add(matches[0])
    assert len(picked) > 1  # training picks other captions than the first


def test_text_is_eos_terminated_truncated_and_padded(world):
    tokenizer = world["tokenizer"]
    ids = tokenizer.encode("a small red cube").ids
    assert text_ids(tokenizer, "a small red cube", 8).tolist() == ids + [EOS_ID] + [PAD_ID] * (7 - len(ids))
    long = " ".join(["a small red cube"] * 5)
    assert text_ids(tokenizer, long, 6).tolist() == tokenizer.encode(long).ids[:6]


def test_det_boxes_follow_the_crop_and_flip(world):
    # crop top=2, left=4, 20 high, 16 wide, flipped; boxes in source pixels, labels are class ids (SHAPES[id - 1])
    row = (2, 4, 20, 16, True)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 32.0, 32.0], [5.0, 10.0, 25.0, 30.0]])
    moved, kept = crop_boxes(boxes, row)
    assert kept.tolist() == [True, False, True]  # the second box lies right of the crop
    assert moved[kept].tolist() == [[10.0, 0.0, 16.0, 8.0], [0.0, 8.0, 15.0, 20.0]]
    sample = {
        "crop_settings": torch.tensor([list(row[:4]) + [1]]),
        "det": {"boxes": boxes, "labels": torch.tensor([1, 2, 3])},
    }
    out = FourMSample(small_registry(), world["tokenizer"], train=False)(sample, torch.Generator())
    # x / 16 and y / 20 in 999 bins; the box nearer the origin (0, 0.4) comes first
    expected = f"v0=0 v1=400 v2=937 v3=999 {SHAPES[2]} v0=624 v1=0 v2=999 v3=400 {SHAPES[0]}"
    assert torch.equal(out["det"], text_ids(world["tokenizer"], expected, 32))
    assert set(out) == {"det"}


ROW0 = torch.tensor([[0, 0, SIZE, SIZE, 0]])


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        ({"tok_rgb": torch.zeros(N_CROPS, 16, dtype=torch.int16)}, "missing_crop_settings"),
        ({"tok_rgb": torch.zeros(N_CROPS, 9, dtype=torch.int16), "crop_settings": ROW0}, "bad_tokens"),
        ({"tok_rgb": torch.full((N_CROPS, 16), CODEBOOK_SIZE, dtype=torch.int16), "crop_settings": ROW0}, "bad_tokens"),
        ({"rgb": torch.zeros(3, 16, 16, dtype=torch.uint8), "crop_settings": ROW0}, "bad_crop_settings"),
        (
            {"det": {"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([99])}, "crop_settings": ROW0},
            "bad_det",
        ),
        ({"caption": []}, "bad_text"),
    ],
)
def test_a_sample_that_does_not_fit_the_config_is_a_sample_error(world, sample, reason):
    with pytest.raises(SampleError) as caught:
        FourMSample(small_registry(), world["tokenizer"], train=False)(sample, torch.Generator())
    assert caught.value.reason == reason


def make_data(world, train=None, val="default", **overrides) -> FourMData:
    settings = {
        "train": pattern(world["root"]) if train is None else train,
        "val": pattern(world["root"], shards="{00001..00001}") if val == "default" else val,
        "in_domains": IN_DOMAINS,
        "out_domains": OUT_DOMAINS,
        "alphas": str(world["alphas"]),
        "tokenizer_path": world["tokenizer_path"],
        "batch_size": 4,
        "input_tokens": [8, 24],
        "target_tokens": 24,
        "modalities": OVERRIDES,
        "cache_dir": str(world["root"].parent / "cache"),
        "seed": 7,
        **overrides,
    }
    return FourMData(**settings)


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert torch.equal(a["sample_id"], b["sample_id"])
    for name in IN_DOMAINS:
        for field in ("tensor", "is_input", "is_target"):
            assert torch.equal(a[name][field], b[name][field]), (name, field)


def test_masked_batches_hold_the_prepared_samples(world):
    data = make_data(world)
    assert data.tokens_per_sample == 48
    assert data.info()["train_samples"] == 12 and data.info()["val_samples"] == 6
    prepare = FourMSample(data.modalities, world["tokenizer"], train=True)
    shards = raw_samples(world)
    for step in range(4):  # crosses the epoch boundary (3 batches of 4 per epoch)
        batch = next(data.train)
        assert set(batch) == {*IN_DOMAINS, "sample_id"}
        epoch = step // 3
        for row, sample_id in enumerate(batch["sample_id"].tolist()):
            expected = prepare(shards[sample_id], sample_generator(7, epoch, sample_id))
            for name in ("tok_rgb@32", "tok_depth@32", "rgb@32"):
                assert torch.equal(batch[name]["tensor"][row], expected[name])
        inputs = sum(batch[name]["is_input"].sum(1) for name in IN_DOMAINS)
        targets = sum(batch[name]["is_target"].sum(1) for name in IN_DOMAINS)
        assert ((inputs >= 1) & (inputs <= 24)).all() and (targets <= 24).all()
        assert not batch["rgb@32"]["is_target"].any()  # input-only
        for name in IN_DOMAINS:
            assert not (batch[name]["is_input"] & batch[name]["is_target"]).any()


def test_resume_mid_epoch_gives_the_same_next_masked_batches(world):
    uninterrupted = make_data(world)
    expected = [next(uninterrupted.train) for _ in range(5)]
    first = make_data(world)
    for _ in range(2):
        next(first.train)
    state = first.train.state_dict()
    resumed = make_data(world)
    resumed.train.load_state_dict(state)
    for step in range(2, 5):
        assert_batches_equal(next(resumed.train), expected[step])


def test_batches_do_not_depend_on_the_number_of_workers(world):
    plain = make_data(world)
    workers = make_data(world, num_workers=2, multiprocessing_context="spawn")
    for _ in range(4):
        assert_batches_equal(next(plain.train), next(workers.train))


def test_validation_uses_row_0_and_the_same_masks_every_time(world):
    data = make_data(world)
    first, again = list(data.val_batches(None)), list(data.val_batches(None))
    assert len(first) == 1
    assert_batches_equal(first[0], again[0])
    codes = stored_arrays(world["root"], "tok_rgb")
    assert first[0]["sample_id"].tolist() == [0, 1, 2, 3]  # ids in order within the val shard (shard 1)
    for row, sample_id in enumerate(first[0]["sample_id"].tolist()):
        assert torch.equal(first[0]["tok_rgb@32"]["tensor"][row], codes[6 + sample_id][0].long())


def test_a_sample_missing_a_tok_member_is_a_counted_skip(world, tmp_path):
    root = tmp_path / "scenes"
    shutil.copytree(world["root"], root)
    tar = root / "tok_depth" / "shard-00001.tar"
    with tarfile.open(tar) as archive:
        last_data = archive.getmembers()[-1].offset_data
    tar.write_bytes(tar.read_bytes()[: last_data + 50])  # cut inside the data of the last member (sample 11)
    data = make_data(world, train=pattern(root), val=None, cache_dir=str(tmp_path / "cache"))
    seen = torch.cat([next(data.train)["sample_id"] for _ in range(3)])
    assert 11 not in seen.tolist() and len(seen) == 12  # replaced by another sample
    assert data.skip_counts() == {"missing_member": 1, "truncated_tar": 1}


def test_a_mixture_marks_the_modalities_a_source_lacks(world):
    sources = {"full": pattern(world["root"]), "rgb_tokens": pattern(world["root"], "[tok_rgb,caption,crop_settings]")}
    data = make_data(world, train=sources, val=None, weights={"full": 1.0, "rgb_tokens": 1.0})
    assert data.info()["train_samples/rgb_tokens"] == 12
    seen_sources = set()
    for _ in range(3):
        batch = next(data.train)
        for row, sample_id in enumerate(batch["sample_id"].tolist()):
            source, _ = data.train_dataset.locate(sample_id)
            seen_sources.add(source)
            if source == "rgb_tokens":
                for name in ("tok_depth@32", "rgb@32", "det"):
                    assert not batch[name]["tensor"][row].any()
                    assert not batch[name]["is_input"][row].any() and not batch[name]["is_target"][row].any()
    assert seen_sources == {"full", "rgb_tokens"}


def test_the_data_names_its_tokenizers_and_refuses_codes_of_two(world, tmp_path):
    """A run copies what ``tokenizer_paths`` names: the WordPiece file and the image tokenizers pretokenize-4m
    recorded beside the codes (here tok_rgb only). Sources of one modality encoded by two tokenizers: an error."""
    rgb = record_image_tokenizer(export_tiny_tokenizer(tmp_path / "tok-rgb", "rgb"), world["root"] / "tok_rgb")
    assert make_data(world).tokenizer_paths() == {"text": world["tokenizer_path"], "tok_rgb@32": str(rgb)}

    other = tmp_path / "other"
    shutil.copytree(world["root"], other)
    shutil.rmtree(other / "tok_rgb" / "tokenizer")
    record_image_tokenizer(export_tiny_tokenizer(tmp_path / "tok-depth", "depth"), other / "tok_rgb")
    mixture = make_data(world, train={"a": pattern(world["root"]), "b": pattern(other)}, val=None)
    with pytest.raises(ValueError, match="sources of tok_rgb@32 hold codes of different tokenizers"):
        mixture.tokenizer_paths()


def test_single_alpha_follows_the_in_and_out_domains(world):
    data = make_data(world, alphas=0.5)
    columns = list(data.alphas.modalities)
    assert data.alphas.num_components == 1
    for column, name in enumerate(columns):
        assert data.alphas.input_alphas[0][column] == 0.5
        assert data.alphas.target_alphas[0][column] == (0.0 if name == "rgb@32" else 0.5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"in_domains": [*IN_DOMAINS, "tok_foo@32"]}, "tok_foo@32"),
        ({"modalities": {**OVERRIDES, "tok_clip@32": {"vocab_size": 8}}}, "neither in_domains nor out_domains"),
        ({"modalities": {**OVERRIDES, "caption": {"vocab_size": 100, "max_tokens": 24}}}, "caption.*vocab_size"),
        ({"modalities": {**OVERRIDES, "rgb@32": {"patch_size": 8, "decoder": True}}}, "contradicts out_domains"),
        ({"out_domains": [*OUT_DOMAINS, "rgb@32"]}, "pixels can only be an input"),
        ({"train": "PATTERN[tok_rgb,tok_depth,caption,det,rgb]/shard-{00000..00001}.tar"}, "crop_settings"),
        ({"train": "PATTERN[tok_rgb,caption,crop_settings]/shard-{00000..00001}.tar"}, r"modalities \[.*det"),
    ],
)
def test_bad_config_is_a_clear_error(world, change, match):
    if "train" in change:
        change = {"train": change["train"].replace("PATTERN", f"{world['root']}/"), "val": None}
    with pytest.raises(ValueError, match=match):
        make_data(world, **change)


def test_alphas_that_contradict_the_domains_are_rejected(world, tmp_path):
    alphas = yaml.safe_load(world["alphas"].read_text())
    alphas["rgb@32"]["target_alphas"] = [0.0, 0.5]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(alphas))
    with pytest.raises(ValueError, match=r"'rgb@32' has non-zero target alphas .* not in out_domains"):
        make_data(world, alphas=str(tmp_path / "bad.yaml"))
    del alphas["det"]
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(alphas))
    with pytest.raises(ValueError, match="det"):
        make_data(world, alphas=str(tmp_path / "short.yaml"))
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        make_data(world, alphas=str(tmp_path / "nowhere.yaml"))


@pytest.mark.parametrize(
    "alphas", ["all2all_a0.5.yaml", "mix_rgb2all_all2all_a0.5.yaml", "mix_rgb2all_capbias_all2all.yaml"]
)
def test_synthetic_world_configs_agree_with_each_other(alphas):
    configs = Path(__file__).parents[3] / "configs"
    data = OmegaConf.to_container(load_config(configs / "fourm/tiny.yaml").data)
    modalities = fourm_registry(data["in_domains"], data["out_domains"], data["modalities"])
    mixture = fourm_alphas(str(configs / "fourm/alphas" / alphas), modalities, data["in_domains"], data["out_domains"])
    assert mixture.modalities == tuple(sorted(data["in_domains"]))
    assert [spec.grid for spec in modalities.values() if spec.is_image] == [(8, 8)] * 5
    assert modalities["caption"].vocab_size == modalities["det"].vocab_size == 8192
    assert not modalities["rgb@64"].decoder
    for name in ("rgb", "depth", "normal", "semseg"):
        quantizer = instantiate(load_config(configs / f"tokenizers/{name}_tiny.yaml").model.quantizer)
        assert modalities[f"tok_{name}@64"].vocab_size == quantizer.codebook_size, name


def test_the_trainer_builds_it_from_a_config_node(world):
    node = OmegaConf.create(
        {
            "_target_": "polymodal.families.fourm.data.FourMData",
            "train": pattern(world["root"]),
            "val": None,
            "in_domains": IN_DOMAINS,
            "out_domains": OUT_DOMAINS,
            "modalities": OVERRIDES,
            "alphas": 0.5,
            "tokenizer_path": world["tokenizer_path"],
            "batch_size": 2,
            "input_tokens": [4, 16],
            "target_tokens": [4, 16],
            "cache_dir": str(world["root"].parent / "cache"),
        }
    )
    data = instantiate(node, seed=3, dp_rank=1, dp_world=2)
    assert data.tokens_per_sample == 32 and data.info()["in_domains"] == IN_DOMAINS
    batch = next(data.train)
    assert batch["sample_id"].shape == (2,) and batch["caption"]["tensor"].shape == (2, 2 * (24 + 1))
    assert data.train.state_dict()["global_batch"] == 4


def test_the_largest_batch_is_shaped_like_training_batches_with_full_budgets(world):
    """What ``polymodal plan`` measures, made from the config alone (no shard or tokenizer read): the training
    batch's keys, shapes and dtypes, every sample using the whole budgets, the targets in the largest
    vocabularies (the text modalities: caption up to its 24 tokens, then det) and never on an input position."""
    real = next(make_data(world).train)
    largest = FourMData.largest_batch(
        train="/no/such/shards",
        val=None,
        in_domains=IN_DOMAINS,
        out_domains=OUT_DOMAINS,
        alphas="/no/such/alphas.yaml",
        tokenizer_path="/no/such/wordpiece.json",
        batch_size=4,
        input_tokens=[8, 24],
        target_tokens=24,
        modalities=OVERRIDES,
    )
    batch = largest.batch
    assert batch.keys() == real.keys() and batch["sample_id"].shape == real["sample_id"].shape
    for name in IN_DOMAINS:
        for field in ("tensor", "is_input", "is_target"):
            assert (batch[name][field].shape, batch[name][field].dtype) == (
                real[name][field].shape,
                real[name][field].dtype,
            )
        assert not (batch[name]["is_input"] & batch[name]["is_target"]).any()
    assert (sum(batch[name]["is_input"].sum(1) for name in IN_DOMAINS) == 24).all()
    targets = {name: batch[name]["is_target"].sum(1).tolist() for name in IN_DOMAINS}
    assert targets == {"rgb@32": [0] * 4, "tok_rgb@32": [0] * 4, "tok_depth@32": [0] * 4, "caption": [24] * 4,
                       "det": [0] * 4}  # fmt: skip
    assert largest.description == (
        "4 samples of 24 input + 24 target tokens (targets in the largest vocabularies: caption 24)"
    )
    spilled = largest_token_counts(small_registry(), input_tokens=8, target_tokens=40)
    assert {name: target for name, (_, target) in spilled.items() if target} == {"caption": 24, "det": 16}
