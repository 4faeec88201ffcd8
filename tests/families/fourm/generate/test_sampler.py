"""The chained sampler on a tiny random 4M: MaskGIT / ROAR token counts, autoregressive stopping and merging,
classifier-free guidance, determinism, and bad input."""

import pytest
import torch

from polymodal.families.fourm.generate import sampler as sampler_module
from polymodal.families.fourm.generate.inputs import full_input, generation_batch, sequence_target
from polymodal.families.fourm.generate.sampler import GenerationSampler
from polymodal.families.fourm.generate.schedules import (
    GenerationSchedule,
    GenerationStep,
    TargetSettings,
    build_schedule,
)
from polymodal.tokenizers.text.wordpiece import sentinel_id

S1, S2 = sentinel_id(1), sentinel_id(2)
DEPTH = "tok_depth@32"


def rgb_batch(model, schedule, batch_size=2, seed=0, extra=None):
    rgb = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    inputs = {"rgb@32": full_input(model.modalities["rgb@32"], rgb), **(extra or {})}
    return generation_batch(model.modalities, inputs, schedule.targets, batch_size, cond_domains=schedule.cond_domains)


def record_calls(monkeypatch, model, method):
    """Wrap ``model.<method>``; returns the list of (args, result) of every call."""
    calls, original = [], getattr(model, method)

    def wrapper(*args):
        result = original(*args)
        calls.append((args, result))
        return result

    monkeypatch.setattr(model, method, wrapper)
    return calls


@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_each_step_fills_exactly_its_scheduled_tokens(model, monkeypatch, scheme):
    schedule = build_schedule(["rgb@32"], [TargetSettings(DEPTH, scheme, steps=4)], model.modalities)
    counts = [step.num_tokens for step in schedule.steps]
    queries = record_calls(monkeypatch, model, "embed_targets")
    batch = rgb_batch(model, schedule)
    previous = batch[DEPTH]
    for index, _, state in GenerationSampler(model).generate_iter(batch, schedule, torch.Generator().manual_seed(0)):
        entry = state[DEPTH]
        assert entry["is_input"].sum(1).tolist() == [sum(counts[: index + 1])] * 2
        assert torch.equal(entry["is_target"], ~entry["is_input"])
        kept = previous["is_input"]
        assert torch.equal(entry["tensor"][kept], previous["tensor"][kept])  # filled tokens never change
        previous = entry
    assert previous["is_input"].all() and not batch[DEPTH]["is_input"].any()  # the input batch is not modified
    queried = [int(args[0][DEPTH]["is_target"].sum()) // 2 for args, _ in queries]
    pending = [16 - sum(counts[:index]) for index in range(len(counts))]
    assert queried == (pending if scheme == "maskgit" else counts)


def test_maskgit_keeps_the_most_probable_sampled_tokens(model, monkeypatch):
    drawn = {}

    def fake_sample(logits, temperature, generator, top_k, top_p):
        drawn["probs"] = torch.rand(logits.shape[0], generator=torch.Generator().manual_seed(1))
        return torch.arange(logits.shape[0]) % 64, drawn["probs"]

    monkeypatch.setattr(sampler_module, "sample_tokens", fake_sample)
    schedule = build_schedule(["rgb@32"], [TargetSettings(DEPTH, "maskgit", steps=2)], model.modalities)
    step = next(GenerationSampler(model).generate_iter(rgb_batch(model, schedule), schedule, torch.Generator()))
    entry = step[2][DEPTH]
    best = drawn["probs"].view(2, 16).topk(schedule.steps[0].num_tokens, dim=1).indices.sort(dim=1).values
    assert torch.equal(entry["is_input"].nonzero()[:, 1].view(2, -1), best)
    assert torch.equal(entry["tensor"].gather(1, best), (torch.arange(32) % 64).view(2, 16).gather(1, best))


def scripted_predict(monkeypatch, model, scripts):
    """Make the model predict ``scripts[b][j]`` at the j-th query of sample b, whatever its input."""
    original = model.predict

    def predict(hidden, queries):
        logits, targets = original(hidden, queries)
        name = queries.modalities[0]
        per_sample = logits[name].shape[0] // len(scripts)
        forced = torch.full_like(logits[name], -1e4)
        for row in range(forced.shape[0]):
            script = scripts[row // per_sample]
            forced[row, script[min(row % per_sample, len(script) - 1)]] = 0.0
        return {name: forced}, targets

    monkeypatch.setattr(model, "predict", predict)


def test_autoregression_stops_at_the_closing_sentinel_and_merges_the_span(model, monkeypatch):
    scripted_predict(monkeypatch, model, [[4300, 4301, S2, 4400], [4302, 4303, 4304, 4305, S2, 4400]])
    calls = record_calls(monkeypatch, model, "decode")
    encodes = record_calls(monkeypatch, model, "encode")
    schedule = build_schedule(["rgb@32"], [TargetSettings("caption", temperature=1.0)], model.modalities)
    prompt = sequence_target(model.modalities["caption"], [[4200, S1], [S1]])
    batch = rgb_batch(model, schedule, extra={"caption": prompt})
    caption = GenerationSampler(model).generate(batch, schedule, torch.Generator())["caption"]
    assert len(calls) == 5 and len(encodes) == 1  # until both samples closed; the encoder runs once
    assert caption["tensor"][0][caption["is_input"][0]].tolist() == [4200, 4300, 4301]
    assert caption["tensor"][1][caption["is_input"][1]].tolist() == [4302, 4303, 4304, 4305]
    assert not caption["is_target"].any()


def test_autoregression_without_closing_sentinel_stops_at_max_tokens(model, monkeypatch):
    scripted_predict(monkeypatch, model, [[4300], [4301]])
    calls = record_calls(monkeypatch, model, "decode")
    schedule = build_schedule(["rgb@32"], [TargetSettings("caption")], model.modalities)
    caption = GenerationSampler(model).generate(rgb_batch(model, schedule), schedule, torch.Generator())["caption"]
    max_tokens = model.modalities["caption"].max_tokens
    assert len(calls) == max_tokens and caption["is_input"].sum(1).tolist() == [max_tokens] * 2


def guided_schedule(model, scale, cond=("rgb@32",)):
    return build_schedule(list(cond), [TargetSettings(DEPTH, "maskgit", steps=2, cfg_scale=scale)], model.modalities)


def test_cfg_scale_one_is_no_guidance(model, monkeypatch):
    encodes = record_calls(monkeypatch, model, "encode")
    results = []
    for schedule in (guided_schedule(model, 1.0), guided_schedule(model, 1.0, cond=())):
        batch = rgb_batch(model, guided_schedule(model, 1.0))
        results.append(GenerationSampler(model).generate(batch, schedule, torch.Generator().manual_seed(4))[DEPTH])
    assert torch.equal(results[0]["tensor"], results[1]["tensor"]) and len(encodes) == 4
    GenerationSampler(model).generate(batch, guided_schedule(model, 2.0), torch.Generator())
    assert len(encodes) == 8  # two passes per step


def test_cfg_combines_conditional_and_unconditional_logits(model, monkeypatch):
    scale = 2.5
    schedule = guided_schedule(model, scale)
    batch = rgb_batch(model, schedule)
    sampler = GenerationSampler(model)
    pending = batch[DEPTH]["is_target"]
    plain = GenerationStep(DEPTH, "maskgit", 8, 1.0, 1.0, ("rgb@32",))
    conditional = sampler.step_logits(batch, plain, pending)
    unconditional = sampler.step_logits(sampler.unconditional_batch(batch, ("rgb@32",)), plain, pending)
    assert not torch.allclose(conditional, unconditional)
    guided = sampler.step_logits(batch, schedule.steps[0], pending)
    assert torch.allclose(guided, unconditional + scale * (conditional - unconditional), atol=1e-5)

    predictions = record_calls(monkeypatch, model, "predict")  # the logits of a real step, at temperature 0
    greedy = GenerationSchedule(schedule.cond_domains, (GenerationStep(DEPTH, "maskgit", 16, 0.0, scale, ("rgb@32",)),))
    out = sampler.generate(batch, greedy, torch.Generator())[DEPTH]
    (_, (cond, _)), (_, (uncond, _)) = predictions
    expected = (uncond[DEPTH] + scale * (cond[DEPTH] - uncond[DEPTH])).argmax(-1).view(2, 16)
    assert torch.equal(out["tensor"], expected)


def test_same_seed_same_generations(model):
    schedule = build_schedule(
        ["rgb@32"],
        [TargetSettings(DEPTH, "roar", steps=3, cfg_scale=1.5), TargetSettings("caption", temperature=1.0)],
        model.modalities,
        cfg_grow_conditioning=True,
        top_k=50,
    )
    batch = rgb_batch(model, schedule)
    runs = [GenerationSampler(model).generate(batch, schedule, torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    for name in (DEPTH, "caption"):
        assert torch.equal(runs[0][name]["tensor"], runs[1][name]["tensor"])
    assert not torch.equal(runs[0][DEPTH]["tensor"], runs[2][DEPTH]["tensor"])


def test_bad_input_gives_clear_errors(model):
    schedule = guided_schedule(model, 1.0)
    batch = rgb_batch(model, schedule)
    sampler = GenerationSampler(model)
    cases = [
        (GenerationStep("rgb@32", "maskgit", 4, 1.0, 1.0, ()), "cannot predict 'rgb@32'"),
        (GenerationStep("tok_normal@32", "maskgit", 4, 1.0, 1.0, ()), "unknown target modality"),
        (GenerationStep("caption", "autoregressive", None, 1.0, 1.0, ()), r"\['caption'\] are not in the generation"),
        (GenerationStep(DEPTH, "autoregressive", None, 1.0, 1.0, ()), "cannot use autoregressive"),
    ]
    for step, message in cases:
        with pytest.raises(ValueError, match=message):
            sampler.generate(batch, GenerationSchedule((), (step,)), torch.Generator())
    uneven = {**batch, DEPTH: {**batch[DEPTH], "is_target": batch[DEPTH]["is_target"].clone()}}
    uneven[DEPTH]["is_target"][0, 0] = False
    with pytest.raises(ValueError, match="different numbers of positions"):
        sampler.generate(uneven, schedule, torch.Generator())
    with pytest.raises(ValueError, match="needs a FourM"):
        GenerationSampler(torch.nn.Linear(2, 2))
