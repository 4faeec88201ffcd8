"""``polymodal.load_run``: a trained run, checkpoint or export in one call, of the right kind, with its tokenizers."""

import pytest
import torch

import polymodal
from polymodal.cli import main
from polymodal.runs import LanguageModelRun, TrainedRun, family_of_target, load_run
from polymodal.tokenizers.text.bpe import EOS_ID


@pytest.fixture
def trained(tiny_config, tmp_path):
    assert main(["train", "--config", str(tiny_config)]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    return tmp_path


def test_run_checkpoint_and_export_load_the_same_language_model(trained):
    checkpoint = sorted((trained / "run" / "checkpoints").glob("step_*"))[-1]
    runs = [load_run(trained / "run"), load_run(checkpoint), load_run(trained / "export")]
    assert all(isinstance(run, LanguageModelRun) and not run.model.training for run in runs)
    texts = {run.generate("the", max_new_tokens=12, temperature=0.9, top_p=0.95, seed=3) for run in runs}
    assert len(texts) == 1
    assert polymodal.load_run is load_run


def test_generate_continues_the_prompt_with_the_models_tokens(trained):
    run = load_run(trained / "run")
    tokenizer = run.tokenizers["text"]
    prompt = tokenizer.encode("the").ids
    tokens = run.model.generate(torch.tensor([prompt]), 10, temperature=0.0, stop_id=EOS_ID)[0, len(prompt) :]
    new = tokens.tolist()
    assert run.generate("the", max_new_tokens=10, temperature=0.0) == tokenizer.decode(
        new[: new.index(EOS_ID)] if EOS_ID in new else new
    )
    assert run.generate("the", 10, temperature=0.0, seed=1) == run.generate("the", 10, temperature=0.0, seed=2)
    sampled = {run.generate("the", 10, temperature=1.5, seed=seed) for seed in range(4)}
    assert len(sampled) > 1 and run.generate("the", 10, temperature=1.5, seed=0) in sampled
    with pytest.raises(ValueError, match="the prompt is empty"):
        run.generate("")


def test_a_run_without_tokenizers_says_how_to_give_it_one(trained):
    import shutil

    shutil.rmtree(trained / "export" / "tokenizers")
    run = load_run(trained / "export")
    with pytest.raises(KeyError, match="carries no tokenizer 'text'"):
        run.generate("the")
    run.tokenizers["text"] = load_run(trained / "run").tokenizers["text"]
    assert isinstance(run.generate("the", max_new_tokens=2), str)


def test_the_family_of_a_model_target():
    assert family_of_target("polymodal.families.fourm.model.build_fourm") == "fourm"
    assert family_of_target("polymodal.models.fourm.build_fourm") == "fourm"  # written before the families layout
    assert family_of_target("polymodal.models.llm.build_llm") is None
    assert family_of_target(None) is None
    assert issubclass(LanguageModelRun, TrainedRun)
