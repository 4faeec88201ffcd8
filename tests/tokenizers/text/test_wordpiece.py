import json
import math

import pytest
import torch
from tokenizers import decoders

from polymodal.data.synth.det_text import det_to_text
from polymodal.data.synth.scene import SHAPES
from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.tokenizers.text.bpe import save_tokenizer
from polymodal.tokenizers.text.wordpiece import (
    DEFAULT_LAYOUT,
    EOS_ID,
    PAD_ID,
    SOS_ID,
    SYNTHETIC_CLASSES,
    UNK_ID,
    WordPieceLayout,
    coord_id,
    load_wordpiece,
    sentinel_id,
    train_wordpiece,
)

FIXED = 4 + 200 + 4 * 1000 + len(SHAPES)
VOCAB = FIXED + 300


@pytest.fixture(scope="module")
def scene_texts():
    return synthetic_scene_texts(40)


@pytest.fixture(scope="module")
def tokenizer(scene_texts):
    return train_wordpiece(scene_texts + ["Plain prose, with punctuation! And numbers 12 345."] * 5, VOCAB)


def test_fixed_id_layout_matches_4m():
    assert (PAD_ID, UNK_ID, SOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert [sentinel_id(k) for k in (0, 1, 199)] == [4, 5, 203]
    # 4M: vk=n -> 204 + 1000k + n
    assert [coord_id(k, n) for k, n in [(0, 0), (0, 999), (1, 0), (2, 300), (3, 999)]] == [204, 1203, 1204, 2504, 4203]
    # classes sorted: cone, cube, cylinder, sphere
    assert [DEFAULT_LAYOUT.class_id(n) for n in ("cone", "cube", "cylinder", "sphere")] == [4204, 4205, 4206, 4207]
    assert DEFAULT_LAYOUT.first_learnt_id == FIXED == 4208
    tokens = DEFAULT_LAYOUT.tokens()
    assert len(tokens) == len(set(tokens)) == FIXED
    assert tokens[:5] == ["[PAD]", "[UNK]", "[SOS]", "[EOS]", "[S_0]"] and tokens[203] == "[S_199]"
    assert tokens[204] == "v0=0" and tokens[1204] == "v1=0" and tokens[4203] == "v3=999"


def test_4m_reference_vector_with_coco_like_classes():
    # reference/4m.md §2.6: COCO's cat/chair are classes 20/22 of the sorted 80 names; here a small sorted stand-in
    layout = WordPieceLayout(class_names=("chair", "car", "cat"))
    assert [layout.class_id(n) for n in ("car", "cat", "chair")] == [4204, 4205, 4206]
    expected = [216, 1244, 2504, 3704, 4205, 604, 1214, 3203, 3904, 4206]
    got = [layout.coord_id(0, 12), layout.coord_id(1, 40), layout.coord_id(2, 300), layout.coord_id(3, 500)]
    got += [layout.class_id("cat"), coord_id(0, 400), coord_id(1, 10), coord_id(2, 999), coord_id(3, 700)]
    got += [layout.class_id("chair")]
    assert got == expected


def test_layout_rejects_bad_indices_and_class_names():
    with pytest.raises(ValueError, match="sentinel index 200"):
        sentinel_id(200)
    with pytest.raises(ValueError, match="axis 4"):
        coord_id(4, 0)
    with pytest.raises(ValueError, match="bin 1000"):
        coord_id(0, 1000)
    with pytest.raises(ValueError, match="unknown class name 'dog'"):
        DEFAULT_LAYOUT.class_id("dog")
    with pytest.raises(ValueError, match="duplicates"):
        WordPieceLayout(class_names=("cube", "cube"))
    with pytest.raises(ValueError, match="lowercase"):
        WordPieceLayout(class_names=("Cube",))


def test_trained_tokenizer_has_every_fixed_id(tokenizer):
    assert [tokenizer.token_to_id(t) for t in DEFAULT_LAYOUT.tokens()] == list(range(FIXED))
    assert FIXED < tokenizer.get_vocab_size() <= VOCAB


def test_det_string_tokenises_to_layout_ids(tokenizer):
    text = "v0=12 v1=40 v2=300 v3=500 cube v0=400 v1=10 v2=999 v3=700 sphere"
    encoding = tokenizer.encode(text)
    assert encoding.tokens == text.split()
    assert encoding.ids == [216, 1244, 2504, 3704, 4205, 604, 1214, 3203, 3904, 4207]
    assert tokenizer.decode(encoding.ids) == text


def test_class_and_coord_tokens_match_whole_words_only(tokenizer):
    # an added token inside a word would split it into separate words ("cube", "s")
    assert "s" not in tokenizer.encode("cubes").tokens
    assert tokenizer.encode("cubesphere").tokens != ["cube", "sphere"]
    assert tokenizer.encode("V0=12 CUBE").ids == [216, 4205]  # normalised (lowercased) before matching
    assert 216 not in tokenizer.encode("xv0=12").ids


def test_specials_are_dropped_by_decode_but_encode_as_one_id(tokenizer):
    ids = tokenizer.encode("[SOS] a cube [S_3] [EOS] [PAD]").ids
    assert ids == [SOS_ID, tokenizer.token_to_id("a"), 4205, sentinel_id(3), EOS_ID, PAD_ID]
    assert tokenizer.decode(ids) == "a cube"


def test_caption_round_trip(tokenizer, scene_texts):
    captions = [t for t in scene_texts if not t.startswith("v0=")]
    assert len(captions) > 40
    for caption in captions:
        encoding = tokenizer.encode(caption)
        assert UNK_ID not in encoding.ids
        assert tokenizer.decode(encoding.ids) == caption.lower()  # "floor: a", not "floor : a"


def test_decode_attaches_punctuation_also_for_tokenizers_saved_with_bert_spacing(tokenizer, tmp_path):
    text = "two objects on a checkered floor: a cube, a sphere."
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    saved = json.loads(tokenizer.to_str())
    saved["decoder"] = json.loads(decoders.WordPiece(prefix="##").__getstate__())  # a file written before the fix
    old_file = tmp_path / "old.json"
    old_file.write_text(json.dumps(saved))
    assert load_wordpiece(old_file).decode(tokenizer.encode(text).ids) == text


def test_capitalised_caption_decodes_lowercased(tokenizer):
    assert tokenizer.decode(tokenizer.encode("Two Large Blue Cubes").ids) == "two large blue cubes"


def test_unknown_characters_become_unk(tokenizer):
    encoding = tokenizer.encode("a 数 cube ☃snow qzx")
    assert encoding.tokens[0] == "a" and encoding.tokens[2] == "cube"
    assert encoding.tokens[1] == "[UNK]" and encoding.tokens[3] == "[UNK]"
    assert UNK_ID in encoding.ids


def test_vocab_too_small_is_rejected(scene_texts):
    with pytest.raises(ValueError, match="fixed layout alone takes 4208"):
        train_wordpiece(scene_texts, FIXED)
    with pytest.raises(ValueError, match="alphabet"):
        train_wordpiece(scene_texts, FIXED + 3)


def test_configurable_layout_sizes(scene_texts):
    tok = train_wordpiece(
        scene_texts, 4 + 3 + 4 * 10 + 2 + 200, num_sentinels=3, coord_bins=10, class_names=("cube", "cone")
    )
    layout = WordPieceLayout(3, 10, ("cube", "cone"))
    assert tok.encode("[S_2] v3=9 cone cube").ids == [6, layout.coord_id(3, 9), 47, 48] == [6, 46, 47, 48]
    assert tok.token_to_id("[S_3]") is None and tok.encode("v0=10").tokens != ["v0=10"]


def test_save_load_round_trip(tokenizer, tmp_path):
    path = save_tokenizer(tokenizer, tmp_path / "sub" / "wp.json")
    loaded = load_wordpiece(path)
    text = "v0=1 v1=2 v2=3 v3=4 cone, two small red spheres [EOS]"
    assert loaded.encode(text).ids == tokenizer.encode(text).ids
    assert loaded.to_str() == tokenizer.to_str()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["wp.json"]  # no temporary left behind


def test_load_rejects_corrupt_and_foreign_files(tokenizer, tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(tokenizer.to_str()[:500])
    with pytest.raises(ValueError, match="corrupt"):
        load_wordpiece(corrupt)
    with pytest.raises(FileNotFoundError):
        load_wordpiece(tmp_path / "missing.json")
    other_layout = tmp_path / "other.json"
    save_tokenizer(tokenizer, other_layout)
    with pytest.raises(ValueError, match="layout token 'v0=0' has id 204, expected 6"):
        load_wordpiece(other_layout, WordPieceLayout(num_sentinels=2, coord_bins=10))
    json_data = json.loads(tokenizer.to_str())
    json_data["added_tokens"] = [t for t in json_data["added_tokens"] if t["content"] != "v0=12"]
    json_data["model"]["vocab"].pop("v0=12")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(json_data))
    with pytest.raises(ValueError, match="'v0=12' has id None"):
        load_wordpiece(broken)


# ---- det_to_text -------------------------------------------------------------------------------------


def naive_det_string(boxes, names, height, width, bins):
    rows = []
    for (x0, y0, x1, y1), name in zip(boxes, names, strict=True):
        norm = [x0 / width, y0 / height, x1 / width, y1 / height]
        rows.append((math.sqrt(norm[0] ** 2 + norm[1] ** 2), norm, name))
    rows.sort(key=lambda r: r[0])
    words = []
    for _, norm, name in rows:
        words += [f"v{k}={int(math.floor(c * (bins - 1) + 0.5))}" for k, c in enumerate(norm)] + [name]
    return " ".join(words)


def test_det_to_text_reference_example():
    # reference: "v0=12 v1=40 v2=300 v3=500 cat v0=400 v1=10 v2=999 v3=700 chair" in a 999 px image (pixel = bin)
    boxes = [[400, 10, 999, 700], [12, 40, 300, 500]]
    assert det_to_text(torch.tensor(boxes), ["chair", "cat"], 999) == (
        "v0=12 v1=40 v2=300 v3=500 cat v0=400 v1=10 v2=999 v3=700 chair"
    )


def test_det_to_text_matches_naive_reference():
    generator = torch.Generator().manual_seed(0)
    height, width = 48, 80
    corners = torch.rand(12, 2, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    labels = torch.randint(1, len(SHAPES) + 1, (12,), generator=generator)
    names = [SHAPES[i - 1] for i in labels.tolist()]
    for bins in (1000, 7):
        expected = naive_det_string(boxes.tolist(), names, height, width, bins)
        assert det_to_text(boxes, labels, (height, width), bins=bins) == expected
        assert det_to_text(boxes.tolist(), names, (height, width), bins=bins) == expected


def test_det_to_text_rounding_and_edges():
    # 0.5 bins round up; the far image edge is the last bin
    assert det_to_text([[1, 0, 2, 2]], ["cube"], 2, bins=2) == "v0=1 v1=0 v2=1 v3=1 cube"
    assert det_to_text([[0, 0, 64, 64]], ["cube"], 64) == "v0=0 v1=0 v2=999 v3=999 cube"
    assert det_to_text(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 64) == ""


def test_det_to_text_of_rendered_scene_tokenises_without_unk(tokenizer):
    from polymodal.data.synth.render import render_scene

    sample = render_scene(3, 1, 64)
    text = det_to_text(sample["det"]["boxes"], sample["det"]["labels"], 64)
    ids = tokenizer.encode(text).ids
    assert len(ids) == 5 * len(sample["det"]["labels"]) and UNK_ID not in ids


@pytest.mark.parametrize(
    ("boxes", "labels", "size", "match"),
    [
        ([[0, 0, 1]], ["cube"], 8, r"shape \(N, 4\)"),
        ([[0, 0, 1, 1]], ["cube", "cone"], 8, "1 boxes but 2 labels"),
        ([[3, 0, 1, 1]], ["cube"], 8, "box 0"),
        ([[0, 0, 9, 1]], ["cube"], 8, "inside the 8x8"),
        ([[0, 0, float("nan"), 1]], ["cube"], 8, "non-finite"),
        ([[0, 0, 1, 1]], [5], 8, "class id 5"),
        ([[0, 0, 1, 1]], [" cube"], 8, "surrounding whitespace"),
        ([[0, 0, 1, 1]], ["cube"], 0, "image_size"),
    ],
)
def test_det_to_text_rejects_bad_input(boxes, labels, size, match):
    with pytest.raises(ValueError, match=match):
        det_to_text(boxes, labels, size)


def test_det_to_text_rejects_too_few_bins():
    with pytest.raises(ValueError, match="bins"):
        det_to_text([[0, 0, 1, 1]], ["cube"], 8, bins=1)


def test_default_class_tokens_are_the_synthetic_world_classes():
    assert SYNTHETIC_CLASSES == SHAPES


def test_training_is_the_same_in_every_process(tmp_path):
    """HF's trainer breaks merge ties by hash-map order (seeded per process); ours declares the continuation
    characters first, so two processes learn the same vocabulary."""
    import subprocess
    import sys

    code = (
        "import sys; from polymodal.data.synth.texts import synthetic_scene_texts; "
        "from polymodal.tokenizers.text.wordpiece import train_wordpiece; "
        f"print(train_wordpiece(synthetic_scene_texts(60), {VOCAB}).to_str())"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120) for _ in range(3)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
