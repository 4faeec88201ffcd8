"""Fixtures writing small real record sets and data configs in the test's tmp_path, and a tiny exported run."""

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from lumina_corpus import (
    CODEBOOK,
    TEXT_VOCAB,
    lumina_inputs,  # noqa: F401 - a session fixture shared by the Lumina tests
    settings_for,
)
from lumina_records import write_record_set
from trained_runs import export

from polymodal.families.lumina.pretokenize import pretokenize_rank
from polymodal.families.lumina.records import RecordSet, concat_records
from polymodal.tokenizers.carried import TOKENIZERS_DIR, copy_tokenizers


@pytest.fixture
def record_set(tmp_path) -> Callable[..., Path]:
    """``record_set(name, lengths, **options)``: :func:`write_record_set` in ``tmp_path / name``."""

    def make(name: str, lengths: Sequence[int], **options) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True)
        return write_record_set(root, [int(n) for n in lengths], **options)

    return make


@pytest.fixture
def data_config(tmp_path) -> Callable[..., Path]:
    """``data_config(text, name="data.yaml")``: a data config file in ``tmp_path``."""

    def make(text: str, name: str = "data.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


CHAMELEON = {
    "_target_": "polymodal.families.lumina.model.build_chameleon",
    "vocab_size": TEXT_VOCAB + CODEBOOK,
    "dim": 32,
    "depth": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "ffn_dim": 64,
    "max_seq_len": 512,
}


@pytest.fixture(scope="session")
def lumina_run(lumina_inputs, tmp_path_factory) -> dict[str, Path]:  # noqa: F811 - the imported fixture
    """A tiny trained-looking run of the family, laid out as training and ``polymodal export`` leave it: real records
    of the synthetic conversations (target size 64), an export of a random tiny Chameleon whose config names its
    data, and the tokenizers the records were made with in its ``tokenizers/`` folder."""
    base = tmp_path_factory.mktemp("lumina_run")
    records = base / "records"
    pretokenize_rank(settings_for(lumina_inputs, records, splits=1, chunk_size=64, batch_size=8))
    concat_records(records, records / "record.json")
    data_config = base / "data.yaml"
    data_config.write_text(f"META:\n  - path: {records / 'record.json'}\n")
    data = {
        "_target_": "polymodal.families.lumina.data.LuminaData",
        "data_config": str(data_config),
        "seq_len": 512,
        "batch_size": 2,
        "vocab_size": CHAMELEON["vocab_size"],
    }
    run = export(base / "export", CHAMELEON, {"data": data})
    copy_tokenizers(RecordSet(records / "record.json").tokenizer_paths(), run / TOKENIZERS_DIR)
    image = next((lumina_inputs["conversations"].parent / "images").glob("*.rgb.png"))
    return {"run": run, "data_config": data_config, "image": image}
