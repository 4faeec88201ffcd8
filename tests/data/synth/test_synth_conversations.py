import json
import re
import struct
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from polymodal.data.synth.bad_items import BAD_REASONS, HUGE_SIDE
from polymodal.data.synth.conversations import IMAGE, KINDS, write_conversations
from polymodal.data.synth.labels import ATTRIBUTE_CLASSES, sample_labels
from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import NUMBER_WORDS, SHAPES

STATED_SIZE = re.compile(r"image of (\d+)x(\d+)")
MAX_PIXELS = 4096**2


def _png_size(path):
    """(width, height) from the PNG header, without decoding (a bad file may declare billions of pixels)."""
    return struct.unpack(">II", path.read_bytes()[16:24])


def _image_fault(root, path):
    if not (root / path).is_file():
        return "missing_image"
    width, height = _png_size(root / path)
    if width * height > MAX_PIXELS:
        return "image_too_large"
    try:
        with Image.open(root / path) as image:
            image.load()
    except OSError:
        return "unreadable_image"
    return None


def _item_fault(item, root):
    """What a strict reader finds wrong with a parsed item (None: nothing), checked independently of the writer."""
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        return "malformed_item"
    turns, images = item["conversations"], item.get("image", [])
    if not turns:
        return "empty_conversation"
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "non_utf8"
    if [turn["from"] for turn in turns] != [("human", "gpt")[i % 2] for i in range(len(turns))]:
        return "role_order"
    if sum(turn["value"].count(IMAGE) for turn in turns) != len(images):
        return "placeholder_mismatch"
    return next(filter(None, (_image_fault(root, path) for path in images)), None)


def _entries(out):
    """(item or None if unparseable, its fault, its key in bad_items.json) for every entry of a corpus file."""
    if out.suffix == ".json":
        items = [(item, None) for item in json.loads(out.read_text())]
    else:
        items = []
        for line in out.read_bytes().splitlines():
            try:
                items.append((json.loads(line.decode("utf-8")), None))
            except UnicodeDecodeError:
                items.append((None, "non_utf8"))
            except json.JSONDecodeError:
                items.append((None, "malformed_item"))
    entries = []
    for position, (item, fault) in enumerate(items):
        fault = fault or _item_fault(item, out.parent)
        has_id = isinstance(item, dict) and isinstance(item.get("id"), str)
        entries.append((item, fault, item["id"] if has_id else str(position)))
    return entries


def _images_in_turns(item):
    """(turn, the images its placeholders stand for) for every turn, in order."""
    images = iter(item.get("image", []))
    return [(turn, [next(images) for _ in range(turn["value"].count(IMAGE))]) for turn in item["conversations"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("conversations")
    return write_conversations(root, num_samples=40, seed=0, size=64)


def test_every_item_follows_the_format(corpus):
    items = json.loads(corpus.read_text())
    assert len({item["id"] for item in items}) == len(items) == 40 * 3
    assert not (corpus.parent / "bad_items.json").exists()
    stated_sizes = 0
    for item in items:
        assert _item_fault(item, corpus.parent) is None, item["id"]
        # an item's images are all at its scene's shape, which a prompt that states a size states truly
        assert len({Image.open(corpus.parent / path).size for path in item.get("image", [])}) <= 1
        turns = _images_in_turns(item)
        for (ask, _), (answer, images) in zip(turns, turns[1:], strict=False):
            stated = STATED_SIZE.search(ask["value"])
            if answer["from"] == "gpt" and images and stated:
                assert Image.open(corpus.parent / images[0]).size == tuple(map(int, stated.groups())), item["id"]
                stated_sizes += 1
    assert stated_sizes >= 40


def test_all_kinds_and_aspect_ratios_appear(corpus):
    items = json.loads(corpus.read_text())
    assert {item["id"].split("-", 1)[1] for item in items} == set(KINDS)
    shapes = Counter(
        Image.open(corpus.parent / item["image"][0]).size[::-1] for item in items if item["id"].endswith("to_image")
    )
    assert set(shapes) == {(64, 64), (48, 64), (64, 48), (32, 64), (64, 32)}
    assert shapes.most_common(1)[0][0] == (64, 64)
    text_only = [item for item in items if item["id"].endswith("text_only")]
    assert {"image" in item for item in text_only} == {True, False}  # "image": [] and no "image" both occur
    assert all(item.get("image", []) == [] for item in text_only)


def _assert_count_answer(question, answer, names):
    noun = re.fullmatch(r"How many (\w+)s (are in the image|does this describe: .*)\?", question, re.S).group(1)
    count = len(names) if noun == "object" else names.count(noun)
    assert (NUMBER_WORDS[count] if count else "no") in answer.split(), (question, answer)


def test_answers_are_true_of_the_rendered_scene(corpus):
    items = {item["id"]: item for item in json.loads(corpus.read_text())}
    for index in range(8):
        key = f"{index:08d}"
        generated = items[f"{key}-text_to_image"]
        prompt = generated["conversations"][0]["value"]
        width, height = map(int, STATED_SIZE.search(prompt).groups())
        sample = render_scene(0, index, (height, width))
        rgb = np.asarray(Image.open(corpus.parent / generated["image"][0]))
        assert np.array_equal(rgb, sample["rgb"].permute(1, 2, 0).numpy())
        assert prompt.split("\n", 1)[1] in sample["caption"]
        names = [SHAPES[label - 1] for label in sample["det"]["labels"].tolist()]
        values = {
            kind: [turn["value"] for turn in items[f"{key}-{kind}"]["conversations"]]
            for kind in KINDS
            if f"{key}-{kind}" in items
        }
        if "image_to_caption" in values:
            assert values["image_to_caption"][1] in sample["caption"]
        if "multi_turn" in values:
            _assert_count_answer(*values["multi_turn"][2:4], names)
        if "text_only" in values:
            _assert_count_answer(*values["text_only"], names)


def test_attributes_hold_the_labels_of_each_scene_as_rendered(corpus):
    items = {item["id"]: item for item in json.loads(corpus.read_text())}
    attributes = json.loads((corpus.parent / "attributes.json").read_text())
    assert attributes["classes"] == {name: list(classes) for name, classes in ATTRIBUTE_CLASSES.items()}
    assert sorted(attributes["labels"]) == [f"{index:08d}" for index in range(40)]
    for index in range(8):
        key = f"{index:08d}"
        prompt = items[f"{key}-text_to_image"]["conversations"][0]["value"]
        width, height = map(int, STATED_SIZE.search(prompt).groups())
        assert attributes["labels"][key] == sample_labels(render_scene(0, index, (height, width)))


def _tree(root):
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_deterministic_and_independent_of_workers(tmp_path):
    write_conversations(tmp_path / "a", num_samples=6, seed=3, size=32, bad_fraction=0.5, jsonl=True)
    write_conversations(tmp_path / "b", num_samples=6, seed=3, size=32, bad_fraction=0.5, jsonl=True, workers=2)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_jsonl_holds_the_same_items_one_a_line(tmp_path):
    listed = json.loads(write_conversations(tmp_path / "json", num_samples=5, seed=1, size=32).read_text())
    out = write_conversations(tmp_path / "jsonl", num_samples=5, seed=1, size=32, jsonl=True)
    assert out.name == "conversations.jsonl"
    assert [json.loads(line) for line in out.read_text().splitlines()] == listed
    assert _tree(tmp_path / "json")["images/00000004.rgb.png"] == _tree(tmp_path / "jsonl")["images/00000004.rgb.png"]


@pytest.fixture(scope="module", params=[False, True], ids=["json", "jsonl"])
def bad_corpus(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return write_conversations(root, num_samples=30, seed=0, size=32, bad_fraction=0.5, jsonl=request.param)


def test_bad_items_json_lists_exactly_what_is_wrong(bad_corpus, tmp_path):
    entries = _entries(bad_corpus)
    reported = json.loads((bad_corpus.parent / "bad_items.json").read_text())
    assert reported == {key: fault for _, fault, key in entries if fault is not None}
    assert set(reported.values()) == set(BAD_REASONS)
    assert 0.3 < len(reported) / len(entries) < 0.7

    clean = write_conversations(tmp_path, num_samples=30, seed=0, size=32, jsonl=bad_corpus.suffix == ".jsonl")
    clean_items = {item["id"]: item for item, _, _ in _entries(clean)}
    good = [item for item, fault, _ in entries if fault is None]
    assert good and all(clean_items[item["id"]] == item for item in good)  # spoiling leaves the others as they are


def test_bad_items_concretely(bad_corpus):
    root = bad_corpus.parent
    reported = json.loads((root / "bad_items.json").read_text())
    items = {key: item for item, _, key in _entries(bad_corpus)}
    raw = bad_corpus.read_bytes()
    for key, reason in reported.items():
        if reason == "non_utf8" and bad_corpus.suffix == ".jsonl":
            with pytest.raises(UnicodeDecodeError):
                raw.splitlines()[int(key)].decode("utf-8")
        elif reason == "non_utf8":  # json.loads took the lone surrogate escape, UTF-8 cannot encode it
            assert b"\\udcff" in raw
            with pytest.raises(UnicodeEncodeError):
                items[key]["conversations"][-1]["value"].encode("utf-8")
        elif reason == "image_too_large":
            huge = root / items[key]["image"][-1]
            assert _png_size(huge) == (HUGE_SIDE, HUGE_SIDE) == (60000, 60000) and huge.stat().st_size < 1024
            with pytest.raises(Image.DecompressionBombError):
                Image.open(huge)
        elif reason == "unreadable_image":
            with pytest.raises(OSError), Image.open(root / items[key]["image"][-1]) as image:
                image.load()
        elif reason == "empty_conversation":
            assert items[key]["conversations"] == []


def test_bad_fraction_zero_removes_an_earlier_report(tmp_path):
    write_conversations(tmp_path, num_samples=3, size=32, bad_fraction=0.5)
    assert (tmp_path / "bad_items.json").is_file()
    write_conversations(tmp_path, num_samples=3, size=32)
    assert not (tmp_path / "bad_items.json").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=40), "multiple of 16"),
        (dict(size=(32, 64)), "multiple of 16"),
        (dict(bad_fraction=1.0), "bad_fraction"),
        (dict(bad_fraction=-0.1), "bad_fraction"),
        (dict(num_samples=0), "num_samples"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_conversations(tmp_path, **{"num_samples": 2, **kwargs})
