"""Zero-shot classification and retrieval of a tiny CLIP-like model against plain computations; features extracted
once per evaluation round however many evaluators and sweep points use them."""

import pytest
import torch
import torch.nn.functional as F
from tiny_clip import TEMPLATES, tiny_clip

from polymodal.config import ConfigError
from polymodal.train.evaluators import (
    EvalContext,
    EvaluatorFailed,
    ImageSide,
    ImageSplit,
    LinearProbe,
    Retrieval,
    TextEncoder,
    TextSide,
    ZeroShotClassification,
    build_evaluators,
    run_evaluators,
)

CPU = torch.device("cpu")


def embed(model, images=None, text_ids=None) -> torch.Tensor:
    with torch.no_grad():
        if images is not None:
            return F.normalize(model({"rgb": images}, only="image")["image_embeds"], dim=-1)
        return F.normalize(model({"text_ids": text_ids}, only="text")["text_embeds"], dim=-1)


def test_zero_shot_top1_matches_a_plain_computation(eval_data, single_thread):
    model = tiny_clip().eval()
    split = ImageSplit(str(eval_data["folder"]), split="val", image_size=32)
    text = {"tokenizer": str(eval_data["tokenizer"]), "context_length": 8, "part": "text"}
    evaluator = ZeroShotClassification(split, text, {"part": "image"}, templates=TEMPLATES, batch_size=5)
    result = run_evaluators({"zs": evaluator}, EvalContext(model, CPU))

    everything = split.load(range(len(split)))
    images = embed(model, images=everything["rgb"])
    encode = TextEncoder(str(eval_data["tokenizer"]), context_length=8)
    classes = []
    for name in split.class_names:
        prompts = embed(model, text_ids=encode([template.format(name) for template in TEMPLATES])[0])
        classes.append(F.normalize(prompts.mean(0), dim=-1))
    scores = [[float(image @ text) for text in classes] for image in images]
    predicted = [max(range(len(row)), key=row.__getitem__) for row in scores]
    labels = [int(label) for label in everything["label"]]
    expected = sum(p == label for p, label in zip(predicted, labels, strict=True)) / len(split)
    most_frequent_share = max(labels.count(label) for label in set(labels)) / len(split)
    assert result == {
        "zs/top1": pytest.approx(expected),
        "zs/baseline_top1": pytest.approx(most_frequent_share),
        "zs/samples": len(split),
    }


def test_retrieval_recalls_match_a_plain_computation(eval_data, single_thread):
    model = tiny_clip().eval()
    shards = str(eval_data["shards"]) + "/[rgb,label,caption]/shard-{00000..00002}.tar"
    split = ImageSplit(shards, format="shards", image_size=32, caption_key="caption", label_key=None)
    text = TextSide(str(eval_data["tokenizer"]), context_length=24, part="text")
    evaluator = Retrieval(split, text, ImageSide(part="image"), batch_size=4)
    result = run_evaluators({"ret": evaluator}, EvalContext(model, CPU))

    everything = split.load(range(len(split)))
    images = embed(model, images=everything["rgb"])
    texts = embed(model, text_ids=TextEncoder(str(eval_data["tokenizer"]), 24)(everything["caption"])[0])
    similarity = (images @ texts.T).tolist()
    count = len(split)

    def recall(k: int, image_queries: bool) -> float:
        hits = 0
        for query in range(count):
            row = similarity[query] if image_queries else [similarity[c][query] for c in range(count)]
            better = sum(score > row[query] for score in row)
            hits += better < k
        return hits / count

    expected = {
        "ret/image_to_text_R@1": recall(1, True),
        "ret/image_to_text_R@5": recall(5, True),
        "ret/text_to_image_R@1": recall(1, False),
        "ret/text_to_image_R@5": recall(5, False),
        "ret/samples": count,
    }
    for direction in ("image_to_text", "text_to_image"):  # a random ranking's recall@k: k of the candidates
        expected.update({f"ret/baseline_{direction}_R@1": 1 / count, f"ret/baseline_{direction}_R@5": 5 / count})
    assert result == pytest.approx(expected)


def test_features_are_extracted_once_per_round(eval_data, single_thread):
    model = tiny_clip().eval()
    calls = []
    model.models["image"].register_forward_hook(lambda module, args, output: calls.append(len(args[0]["rgb"])))
    folder = str(eval_data["folder"])
    train, val = ImageSplit(folder, "train", image_size=32), ImageSplit(folder, "val", image_size=32)
    sweep = {"learning_rates": [1e-2, 1e-1], "weight_decays": [0.0, 1e-3], "epochs": 2}
    probes = {name: LinearProbe(train, val, part="image", sweep=sweep, extract_batch_size=8) for name in ("a", "b")}
    context = EvalContext(model, CPU)
    first = run_evaluators(probes, context)
    assert sum(calls) == len(train) + len(val)  # two probes x four sweep points, one extraction
    assert first["a/accuracy"] == first["b/accuracy"]
    run_evaluators(probes, context)
    assert sum(calls) == 2 * (len(train) + len(val))  # a new round extracts again: the model may have changed


def test_a_failing_evaluator_stops_the_evaluation_with_its_name(eval_data):
    folder = str(eval_data["folder"])
    probe = LinearProbe({"location": folder, "split": "train", "image_size": 32},
        {"location": folder, "split": "val", "image_size": 32}, feature_key="no_such_key", part="image")  # fmt: skip
    with pytest.raises(EvaluatorFailed, match="evaluator 'probe' failed: KeyError: .*wrote no 'no_such_key'"):
        run_evaluators({"probe": probe}, EvalContext(tiny_clip(), CPU))


def test_texts_in_the_caption_layout_reach_the_model_with_their_end_positions(eval_data, single_thread):
    """text.eot_key: prompts are encoded as MultimodalData encodes captions (CaptionEncoder) and the text tower
    pools at the end token's position it is given."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from polymodal.models.clip import build_clip
    from polymodal.tokenizers.text.captions import CaptionEncoder

    words = ["a", "photo", "of", "rendering", *ImageSplit(str(eval_data["folder"]), split="val").class_names]
    words = sorted({piece for word in words for piece in word.split()} | {"."})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[SOS]": 2, "[EOS]": 3, **{word: i + 4 for i, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    encoder = TextEncoder(tokenizer, 8, caption_layout=True)
    expected = CaptionEncoder(tokenizer, 8)(["a photo of two objects ."])
    encoded = encoder.encode(["a photo of two objects ."])
    assert all(torch.equal(encoded[key], expected[key]) for key in ("ids", "mask", "eot"))
    assert encoded["ids"][0].tolist()[:2] == [2, vocab["a"]] and encoded["eot"].tolist() == [7]

    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), context_length=8, dim=16, depth=1, num_heads=2, ids_key="caption_ids")
    vision = dict(image_size=32, patch_size=8, dim=16, depth=1, num_heads=2, image_key="rgb")
    model = build_clip(8, vision=vision, text=text | {"eot_key": "caption_eot"}).eval()
    evaluator = ZeroShotClassification(
        ImageSplit(str(eval_data["folder"]), split="val", image_size=32),
        TextSide(tokenizer, context_length=8, key="caption_ids", eot_key="caption_eot", part="text_tower"),
        ImageSide(part="image_tower"),
        templates=TEMPLATES,
    )
    prompts = ["a photo of two objects.", "a rendering of one object."]
    got = evaluator.text_embeddings(EvalContext(model, CPU), prompts)
    captions = CaptionEncoder(tokenizer, 8)(prompts)
    with torch.no_grad():
        direct = model({"caption_ids": captions["ids"], "caption_eot": captions["eot"]}, only="text_tower")
    torch.testing.assert_close(got, F.normalize(direct["text_embeds"], dim=-1))


TEXT_SETTINGS = "text takes tokenizer, context_length, pad_id, key, mask_key, eot_key, embed_key, part"


@pytest.mark.parametrize(
    ("text", "image", "message"),
    [
        ({"tokenizer": "t.json", "eot": "caption_eot"}, None,
            f"evaluators.zs: unknown key 'text.eot' — did you mean 'text.eot_key'? ({TEXT_SETTINGS})"),
        ({"tokenizer": "t.json", "text_part": "text"}, None,
            f"evaluators.zs: unknown key 'text.text_part' — did you mean 'text.part'? ({TEXT_SETTINGS})"),
        ({"tokenizer": "t.json", "layout": "caption"}, None,
            f"evaluators.zs: unknown key 'text.layout' ({TEXT_SETTINGS})"),
        ({"context_length": 8}, None, f"evaluators.zs: missing key 'text.tokenizer' ({TEXT_SETTINGS})"),
        ("t.json", None,
            f"evaluators.zs: text: expected a mapping of TextSide's settings ({TEXT_SETTINGS}), got 't.json'"),
        ({"tokenizer": "t.json"}, {"prat": "image"},
            "evaluators.zs: unknown key 'image.prat' — did you mean 'image.part'? (image takes key, embed_key, part)"),
    ],
)  # fmt: skip
def test_a_wrong_key_of_a_side_is_a_one_line_error_naming_the_allowed_ones(eval_data, text, image, message):
    node = {
        "_target_": "polymodal.train.evaluators.ZeroShotClassification",
        "data": {"location": str(eval_data["folder"]), "split": "val", "image_size": 32},
        "text": text,
        **({"image": image} if image is not None else {}),
    }
    with pytest.raises(ConfigError) as error:
        build_evaluators({"zs": node})
    assert str(error.value) == message
