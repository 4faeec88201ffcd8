import dataclasses
from pathlib import Path

import pytest
from lumina_records import LAYOUT, TOKENIZERS

from polymodal.config.errors import ConfigError
from polymodal.families.lumina.data import LuminaData
from polymodal.families.lumina.data_config import RecordSets, SetEntry, load_data_config
from polymodal.families.lumina.vocabulary import VocabularyLayout


def test_entries_resolve_relative_to_the_config_folder(data_config, tmp_path):
    (tmp_path / "configs").mkdir()
    path = data_config(
        "META:\n  - path: '../sets/a.json'\n  - path: /abs/b.json\n    ratio: 2\n    type: t2i\n",
        name="configs/data.yaml",
    )
    assert load_data_config(path) == [
        SetEntry("../sets/a.json", tmp_path / "configs" / "../sets/a.json", 1.0, "default"),
        SetEntry("/abs/b.json", Path("/abs/b.json"), 2.0, "t2i"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("META: [\n", "is not valid YAML"),
        ("meta:\n  - path: a.json\n", "unknown key 'meta' — did you mean 'META'?"),
        ("", "META must be a non-empty list"),
        ("META: a.json\n", "META must be a non-empty list"),
        ("META: []\n", "META must be a non-empty list"),
        ("META:\n  - a.json\n", r"META\[0\] must be a mapping with a `path`"),
        ("META:\n  - ratio: 0.5\n", r"META\[0\] must be a mapping with a `path`"),
        (
            "META:\n  - path: a.json\n  - path: b.json\n    ration: 0.5\n",
            r"META\[1\] has unknown key 'ration' — did you mean 'ratio'",
        ),
        ("META:\n  - path: a.json\n    ratio: 0\n", r"META\[0\] ratio must be a number > 0"),
        ("META:\n  - path: a.json\n    ratio: -1\n", r"META\[0\] ratio must be a number > 0"),
        ("META:\n  - path: a.json\n    ratio: yes\n", r"META\[0\] ratio must be a number > 0"),
        ("META:\n  - path: a.json\n    ratio: half\n", r"META\[0\] ratio must be a number > 0"),
        ("META:\n  - path: a.json\n    type: 3\n", r"META\[0\] type must be a non-empty string"),
        ("META:\n  - path: ''\n", r"META\[0\] path must be a file path"),
    ],
)
def test_malformed_data_configs_name_the_problem(data_config, text, message):
    path = data_config(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_data_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_config_and_missing_record_set(data_config, tmp_path):
    with pytest.raises(ConfigError, match="data config .*nope.yaml not found"):
        load_data_config(tmp_path / "nope.yaml")
    entries = load_data_config(data_config("META:\n  - path: missing/record.json\n"))
    with pytest.raises(ConfigError, match="record set missing/record.json: record file not found"):
        RecordSets.open(entries)


def test_sets_with_another_layout_or_tokenizer_are_refused(record_set, data_config):
    record_set("a", [5, 6])
    record_set("wide", [5, 6], layout=dataclasses.replace(LAYOUT, text_vocab_size=1024))
    record_set("other_bpe", [5, 6], tokenizers={**TOKENIZERS, "text": {"sha256": "c" * 64}})
    wide = data_config("META:\n  - path: a/record.json\n  - path: wide/record.json\n")
    with pytest.raises(
        ConfigError,
        match=r"wide/record.json uses another vocabulary layout than a/record.json "
        r"\(text_vocab_size 1024 != 512, image_offset 1024 != 512, vocab_size 1280 != 768\)",
    ):
        RecordSets.open(load_data_config(wide))
    other = data_config("META:\n  - path: a/record.json\n  - path: other_bpe/record.json\n")
    with pytest.raises(ConfigError, match=f"other tokenizers than a/record.json \\(sha256 of text {'c' * 64} != "):
        RecordSets.open(load_data_config(other))


def test_model_vocab_size_must_match_the_records(record_set, data_config):
    record_set("a", [5] * 8)
    config = data_config("META:\n  - path: a/record.json\n")
    with pytest.raises(
        ConfigError,
        match=r"have vocab_size 768 \(text 512 \+ 256 image codes\) but the model's "
        "vocab_size is 1000",
    ) as caught:
        LuminaData(str(config), seq_len=16, batch_size=2, vocab_size=1000)
    assert "\n" not in str(caught.value)
    assert LAYOUT.vocab_size == VocabularyLayout(512, 256).vocab_size == 768


def test_bad_loader_settings(record_set, data_config):
    record_set("a", [5] * 8)
    config = str(data_config("META:\n  - path: a/record.json\n"))
    with pytest.raises(ConfigError, match="data.mode must be one of .* got 'packed' — did you mean 'pack'"):
        LuminaData(config, seq_len=16, batch_size=2, vocab_size=768, mode="packed")
    with pytest.raises(ValueError, match=r"the 8 items of epoch 0 do not fill 4 rows of pack mode \(batch_size 2 x "):
        LuminaData(config, seq_len=16, batch_size=2, vocab_size=768, dp_world=2)  # 40 tokens: 3 rows of 16
    with pytest.raises(ValueError, match=r"do not fill 8 rows .* x batches_per_step 2, for some type\)"):
        LuminaData(config, seq_len=16, batch_size=2, vocab_size=768, dp_world=2, group_by_type=True, batches_per_step=2)


def test_a_record_file_is_a_data_config_of_one_set(record_set):
    record = record_set("one", [10, 20, 30])
    assert load_data_config(record) == [SetEntry(name=str(record), path=record)]
