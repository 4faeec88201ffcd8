import random

import numpy as np
import pytest
import torch

from polymodal.families.fourm.masking.alphas import DirichletMixture
from polymodal.families.fourm.masking.masker import FourMMasking, TransferMasking, parse_raw_batch
from polymodal.tokenizers.text.wordpiece import EOS_ID, sentinel_id

S1 = sentinel_id(1)
LAST_SENTINEL = sentinel_id(199)


def is_sentinel(token: int) -> bool:
    return S1 <= token <= LAST_SENTINEL


def splice(inputs: list[int], targets: list[int]) -> list[int]:
    """Invert span masking: put each target span back where its sentinel sits in the input.

    Checks that every span of the target is used exactly once (all but the closing sentinel's). An empty input
    means the whole sequence was dropped as span [S_1].
    """
    assert targets and is_sentinel(targets[0])
    spans, current = {}, None
    for token in targets:
        if is_sentinel(token):
            current = token
            assert current not in spans
            spans[current] = []
        else:
            spans[current].append(token)
    closing = targets[-1]
    assert is_sentinel(closing) and spans.pop(closing) == []
    sequence = []
    for token in inputs or [S1]:
        sequence.extend(spans.pop(token) if is_sentinel(token) else [token])
    assert not spans, f"target spans {list(spans)} have no sentinel in the input"
    return sequence


def raw_batch(batch: int, seed: int, absent: float = 0.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    raw = {
        "rgb@32": torch.rand(batch, 3, 32, 32, generator=g),
        "tok_rgb@32": torch.randint(0, 64, (batch, 4, 4), generator=g),
        "tok_depth@32": torch.randint(0, 64, (batch, 16), generator=g),
        "t5_caption": torch.randn(batch, 6, 4, generator=g),
        "t5_caption_length": torch.randint(0, 7, (batch,), generator=g),
    }
    for name, max_tokens in (("caption", 12), ("det", 10)):
        lengths = torch.randint(1, max_tokens + 1, (batch,), generator=g)
        positions = torch.arange(max_tokens)
        ids = torch.randint(300, 30000, (batch, max_tokens), generator=g)
        ids = torch.where(positions == (lengths - 1)[:, None], EOS_ID, ids)
        raw[name] = torch.where(positions < lengths[:, None], ids, 0)
    for name in ("tok_rgb@32", "caption", "det"):
        raw[f"{name}_present"] = torch.rand(batch, generator=g) >= absent
    return raw


def sequence_parts(masked: dict[str, torch.Tensor], b: int) -> tuple[list[int], list[int]]:
    """The input and target of row b, checking the layout: input first, target right after, PAD elsewhere."""
    tensor, is_input, is_target = masked["tensor"][b], masked["is_input"][b], masked["is_target"][b]
    n_in, n_tg = int(is_input.sum()), int(is_target.sum())
    assert is_input[:n_in].all() and is_target[n_in : n_in + n_tg].all()
    assert (tensor[n_in + n_tg :] == 0).all() and not (is_input & is_target).any()
    return tensor[:n_in].tolist(), tensor[n_in : n_in + n_tg].tolist()


def masked_with_budgets(masking, raw, seed):
    """The masked batch of ``masking(raw, Generator(seed))`` and the budgets it drew (drawn first)."""
    budgets = masking.sample_budgets(parse_raw_batch(masking.modalities, raw), torch.Generator().manual_seed(seed))
    return masking(raw, torch.Generator().manual_seed(seed)), budgets


@pytest.mark.parametrize("seed", range(3))
def test_invariants_with_target_budget(registry, seed):
    masking = FourMMasking(registry, (6, 40), (4, 30), DirichletMixture.single(registry, 0.5, 0.5))
    raw = raw_batch(64, seed, absent=0.2)
    masked, budgets = masked_with_budgets(masking, raw, seed)
    assert set(masked) == set(registry)
    names = list(registry)
    assert (budgets.input.sum(1) <= 40).all() and (budgets.target.sum(1) <= 30).all()
    for column, name in enumerate(names):
        spec, out = registry[name], masked[name]
        b_in, b_tg = budgets.input[:, column], budgets.target[:, column]
        assert out["is_input"].dtype == out["is_target"].dtype == torch.bool
        assert not (out["is_input"] & out["is_target"]).any()
        present = raw.get(f"{name}_present", torch.ones(64, dtype=torch.bool))
        assert not out["is_input"][~present].any() and not out["is_target"][~present].any()
        if spec.is_image:
            assert out["is_input"].shape == (64, spec.num_positions())
            assert torch.equal(out["is_input"].sum(1), b_in) and torch.equal(out["is_target"].sum(1), b_tg)
            assert out["tensor"] is raw[name] if spec.is_pixels else torch.equal(out["tensor"], raw[name].flatten(1))
            continue
        assert (out["is_input"].sum(1) <= b_in).all() and (b_in <= spec.max_tokens).all()
        if spec.kind == "seq_emb":
            assert not out["is_target"].any() and (b_tg == 0).all()
            continue
        assert out["tensor"].shape == (64, spec.num_positions()) and out["tensor"].dtype == torch.int64
        for b in range(64):
            inputs, targets = sequence_parts(out, b)
            assert len(targets) <= b_tg[b]
            assert not targets or is_sentinel(targets[0])
            original = raw[name][b][raw[name][b] != 0].tolist()
            assert [t for t in inputs if not is_sentinel(t)] == [t for t in original if t in inputs]


@pytest.mark.parametrize("seed", range(3))
def test_untruncated_targets_reconstruct_the_sequence(registry, seed):
    masking = FourMMasking(registry, (1, 30), None, DirichletMixture.single(registry, 1.0, 1.0))
    raw = raw_batch(64, seed)
    masked, budgets = masked_with_budgets(masking, raw, seed)
    images = [column for column, name in enumerate(registry) if registry[name].is_image and registry[name].decoder]
    for column in images:
        name = list(registry)[column]
        assert torch.equal(masked[name]["is_target"], ~masked[name]["is_input"])  # target_tokens=None: all the rest
    for name in ("caption", "det"):
        column = list(registry).index(name)
        for b in range(64):
            inputs, targets = sequence_parts(masked[name], b)
            assert len(inputs) <= budgets.input[b, column]
            original = raw[name][b][raw[name][b] != 0].tolist()
            assert splice(inputs, targets) == original
            dropped = [t for t in targets if not is_sentinel(t)]
            assert dropped == [t for t in original if t not in inputs]  # each dropped token once, in order


def mixture_for(registry, input_alphas: dict[str, float], keep: str = "random", target_alpha: float = 1.0):
    entries = {}
    for name, spec in registry.items():
        entries[name] = {"input_alphas": [input_alphas.get(name, 0.0)], "target_alphas": [target_alpha]}
        if spec.is_sequence:
            entries[name]["keep"] = [keep]
    return DirichletMixture.from_entries(entries, registry)


def test_rgb2all_puts_the_input_budget_on_rgb(registry):
    masking = FourMMasking(registry, 20, 20, mixture_for(registry, {"rgb@32": 1000.0}))
    masked, budgets = masked_with_budgets(masking, raw_batch(32, 0), 0)
    assert (masked["rgb@32"]["is_input"].sum(1) == 16).all()  # 16 positions, the rest redistributed
    assert (budgets.input.sum(1) == 20).all()
    assert not masked["rgb@32"]["is_target"].any()  # pixels are never targets
    assert (budgets.target.sum(1) == 20).all()


def test_rgb2all_upstream_mode_drops_the_excess(registry):
    masking = FourMMasking(
        registry, 20, 20, mixture_for(registry, {"rgb@32": 1000.0}), redistribute_capped_budget=False
    )
    masked, budgets = masked_with_budgets(masking, raw_batch(32, 0), 0)
    assert (masked["rgb@32"]["is_input"].sum(1) == 16).all() and (budgets.input.sum(1) == 16).all()


def test_caption_bias_keep_all_gives_the_whole_caption_as_input(registry):
    masking = FourMMasking(registry, 40, 20, mixture_for(registry, {"caption": 1000.0}, keep="all"))
    raw = raw_batch(32, 1)
    masked = masking(raw, torch.Generator().manual_seed(1))
    for b in range(32):
        inputs, targets = sequence_parts(masked["caption"], b)
        assert inputs == raw["caption"][b][raw["caption"][b] != 0].tolist() and targets == [S1]


def test_keep_all_over_budget_decays_until_the_input_fits(registry):
    masking = FourMMasking(registry, 3, None, mixture_for(registry, {"caption": 1000.0}, keep="all"))
    raw = raw_batch(32, 2)
    masked = masking(raw, torch.Generator().manual_seed(2))
    for b in range(32):
        inputs, targets = sequence_parts(masked["caption"], b)
        original = raw["caption"][b][raw["caption"][b] != 0].tolist()
        assert 1 <= len(inputs) <= 3 and splice(inputs, targets) == original


def test_binary_keep_is_all_or_nothing(registry):
    masking = FourMMasking(registry, 40, None, mixture_for(registry, {"det": 1000.0}, keep="binary"))
    raw = raw_batch(64, 3)
    masked = masking(raw, torch.Generator().manual_seed(3))
    whole = 0
    for b in range(64):
        inputs, targets = sequence_parts(masked["det"], b)
        original = raw["det"][b][raw["det"][b] != 0].tolist()
        assert (inputs, targets) in ((original, [S1]), ([S1], [S1, *original, sentinel_id(2)]))
        whole += inputs == original
    assert 10 < whole < 54


def test_absent_modalities_get_nothing_and_their_budget_goes_elsewhere(registry):
    masking = FourMMasking(registry, 30, 30, DirichletMixture.single(registry, 1.0, 1.0))
    raw = raw_batch(32, 4)
    raw["caption_present"][:] = False
    raw["tok_rgb@32_present"][:] = False
    masked, budgets = masked_with_budgets(masking, raw, 4)
    caption, tok_rgb = list(registry).index("caption"), list(registry).index("tok_rgb@32")
    assert (budgets.input[:, [caption, tok_rgb]] == 0).all() and (budgets.target[:, [caption, tok_rgb]] == 0).all()
    assert (budgets.input.sum(1) == 30).all()
    depth = list(registry).index("tok_depth@32")
    target_room = 10 + 16 - budgets.input[:, depth]  # det's cap + the depth positions not used as input
    assert torch.equal(budgets.target.sum(1), torch.clamp(target_room, max=30))
    assert not masked["caption"]["is_input"].any() and (masked["caption"]["tensor"] == 0).all()
    del raw["det"], raw["det_present"]  # a registry modality missing from the batch: no entry, no budget
    masked, budgets = masked_with_budgets(masking, raw, 4)
    assert "det" not in masked and (budgets.input[:, list(registry).index("det")] == 0).all()


def test_seq_emb_rows_come_first_with_zero_sentinels(registry):
    masking = FourMMasking(registry, 40, 10, mixture_for(registry, {"t5_caption": 1000.0}))
    raw = raw_batch(32, 5)
    out = masking(raw, torch.Generator().manual_seed(5))["t5_caption"]
    assert out["tensor"] is raw["t5_caption"] and not out["is_target"].any()  # the vectors are not copied
    assert out["row_index"].shape == out["is_input"].shape == (32, 6)
    for b in range(32):
        n_in = int(out["is_input"][b].sum())
        assert out["is_input"][b, :n_in].all() and (out["row_index"][b, n_in:] == -1).all()
        kept = [int(i) for i in out["row_index"][b, :n_in] if i >= 0]
        assert kept == sorted(kept) and all(i < int(raw["t5_caption_length"][b]) for i in kept)  # kept rows in order
        assert n_in == 0 or len(kept) < n_in or len(kept) == int(raw["t5_caption_length"][b])


def test_batches_depend_only_on_the_generator(registry):
    masking = FourMMasking(registry, (6, 40), (4, 30), DirichletMixture.single(registry, 0.5, 0.5))
    raw = raw_batch(16, 6, absent=0.2)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first = masking(raw, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all()
    torch.rand(3)  # moving the global RNG changes nothing
    second = masking(raw, torch.Generator().manual_seed(7))
    other = masking(raw, torch.Generator().manual_seed(8))
    for name in first:
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key])
    assert any(not torch.equal(first[name]["is_input"], other[name]["is_input"]) for name in first)


def test_transfer_masking(registry):
    masking = TransferMasking(registry, inputs=["rgb@32", "caption"], targets=["tok_depth@32", "det"])
    raw = raw_batch(8, 8, absent=0.3)
    masked = masking(raw)
    assert masked["rgb@32"]["is_input"].all() and not masked["rgb@32"]["is_target"].any()
    assert masked["tok_depth@32"]["is_target"].all() and not masked["tok_depth@32"]["is_input"].any()
    assert not masked["tok_rgb@32"]["is_input"].any() and not masked["tok_rgb@32"]["is_target"].any()
    for b in range(8):
        caption = raw["caption"][b][raw["caption"][b] != 0].tolist()
        det = raw["det"][b][raw["det"][b] != 0].tolist()
        expected_caption = (caption, [S1]) if raw["caption_present"][b] else ([], [])
        expected_det = ([], [S1, *det, sentinel_id(2)]) if raw["det_present"][b] else ([], [])
        assert sequence_parts(masked["caption"], b) == expected_caption
        assert sequence_parts(masked["det"], b) == expected_det


@pytest.mark.parametrize(
    ("inputs", "targets", "message"),
    [
        (["rgb@32"], ["rgb@32"], "both input and target"),
        (["nope"], [], "not in the registry"),
        ([], ["rgb@32"], "cannot be a target"),
        ([], ["t5_caption"], "cannot be a target"),
    ],
)
def test_transfer_masking_rejects_bad_tasks(registry, inputs, targets, message):
    with pytest.raises(ValueError, match=message):
        TransferMasking(registry, inputs, targets)


def _broken(change):
    raw = raw_batch(4, 9)
    change(raw)
    return raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            _broken(lambda r: r.update(tok_clip=torch.zeros(4, 16, dtype=torch.long))),
            r"unknown key\(s\) \['tok_clip'\]",
        ),
        (_broken(lambda r: r.update({"tok_rgb@32": torch.rand(4, 16)})), "'tok_rgb@32' .*must be integer"),
        (_broken(lambda r: r.update({"tok_rgb@32": torch.zeros(4, 15, dtype=torch.long)})), r"\(4, 16\)"),
        (_broken(lambda r: r.update({"tok_rgb@32": torch.full((4, 16), 64)})), "ids must lie in 0..63"),
        (_broken(lambda r: r.update({"rgb@32": torch.rand(4, 3, 16, 16)})), r"pixels\) must be float \(4, 3, 32, 32\)"),
        (_broken(lambda r: r.update(caption=torch.ones(4, 13, dtype=torch.long))), "more than its max_tokens 12"),
        (_broken(lambda r: r.update(caption=torch.tensor([[0, 5]] * 4))), "token after PAD"),
        (_broken(lambda r: r.update(caption=r["caption"].float())), "'caption' .*must be integer"),
        (_broken(lambda r: r.update(det=r["det"][:3], det_present=r["det_present"][:3])), "batch size 4"),
        (_broken(lambda r: r.update(caption_present=torch.ones(4))), "'caption_present' must be a .* bool"),
        (_broken(lambda r: r.update(caption_length=torch.ones(4, dtype=torch.long))), "only seq_emb"),
        (_broken(lambda r: r.update(t5_caption_length=torch.full((4,), 7))), "must lie in 0..6"),
        (_broken(lambda r: r.update(t5_caption=torch.randn(4, 6, 5))), r"float \(B, T, 4\)"),
        ({"other": torch.zeros(2)}, "unknown key"),
    ],
)
def test_bad_raw_batches_raise(registry, raw, message):
    masking = FourMMasking(registry, 8, 8, DirichletMixture.single(registry, 1.0, 1.0))
    with pytest.raises(ValueError, match=message):
        masking(raw, torch.Generator().manual_seed(0))


def test_bad_constructor_arguments_raise(registry):
    mixture = DirichletMixture.single(registry, 1.0, 1.0)
    with pytest.raises(ValueError, match="input_tokens"):
        FourMMasking(registry, (10, 5), 8, mixture)
    with pytest.raises(ValueError, match="target_tokens"):
        FourMMasking(registry, 8, (-1, 4), mixture)
    from polymodal.families.fourm.modalities import ModalityRegistry

    other = ModalityRegistry({name: registry[name] for name in list(registry)[:3]})
    with pytest.raises(ValueError, match="alphas are for modalities"):
        FourMMasking(other, 8, 8, mixture)
