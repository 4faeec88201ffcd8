"""A tiny trained-looking run of the family, laid out as training and ``polymodal export`` leave it: real records of
the synthetic conversations (target size 64), an export of a random tiny Chameleon whose config names its data,
and the tokenizers the records were made with in its ``tokenizers/`` folder."""

from pathlib import Path

import pytest
from lumina_corpus import CODEBOOK, TEXT_VOCAB, settings_for
from trained_runs import export

from polymodal.families.lumina.pretokenize import pretokenize_rank
from polymodal.families.lumina.records import RecordSet, concat_records
from polymodal.tokenizers.carried import TOKENIZERS_DIR, copy_tokenizers

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


@pytest.fixture(scope="module")
def lumina_run(lumina_inputs, tmp_path_factory) -> dict[str, Path]:
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
