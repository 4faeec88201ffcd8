"""Generation batches: full inputs, empty targets, prompts, emptied conditioning, and span merging."""

import pytest
import torch

from polymodal.families.fourm.generate.inputs import (
    closing_sentinel,
    empty_conditioning,
    empty_target,
    full_input,
    generation_batch,
    merge_spans,
    merged_sequence_input,
    sequence_target,
    strip_after_closing,
)
from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.tokenizers.text.wordpiece import EOS_ID, PAD_ID, sentinel_id

S1, S2, S3 = sentinel_id(1), sentinel_id(2), sentinel_id(3)
REGISTRY = ModalityRegistry.from_config(
    ["rgb@32", "tok_rgb@32", "caption"],
    {"rgb@32": {"patch_size": 8}, "tok_rgb@32": {"vocab_size": 64, "patch_size": 8}, "caption": {"max_tokens": 6}},
)
CAPTION = REGISTRY["caption"]


def test_merge_spans_splices_each_span_into_its_sentinel():
    assert merge_spans([5100, S1, 5103], [S1, 5101, 5102, S2]) == [5100, 5101, 5102, 5103]
    assert merge_spans([S1, 507, S2], [S1, 505, S2, 508, 509, S3]) == [505, 507, 508, 509]
    assert merge_spans([509, S1], [S1, S2]) == [509]  # an empty span
    assert merge_spans([509, S1, 4000], [S1, 511, 512]) == [509, 511, 512, 4000]  # no closing sentinel: all tokens
    assert closing_sentinel([509, S1]) == S2 and closing_sentinel([S1, 504, S2]) == S3
    assert strip_after_closing([S1, 505, S2, 506, S2], S2) == [S1, 505, S2]
    with pytest.raises(ValueError, match="no sentinel"):
        closing_sentinel([509, 510])


def test_empty_targets_follow_the_layout():
    image = empty_target(REGISTRY["tok_rgb@32"], 2)
    assert image["tensor"].shape == (2, 16) and not image["is_input"].any() and image["is_target"].all()
    text = empty_target(CAPTION, 2)
    length = CAPTION.num_positions()
    assert text["tensor"][0, :2].tolist() == [S1, S1] and (text["tensor"][:, 2:] == PAD_ID).all()
    assert text["is_input"][0].tolist() == [True] + [False] * (length - 1)
    assert text["is_target"][0].tolist() == [False] + [True] * (length - 1)
    prompt = sequence_target(CAPTION, [[300, 301, S1]])
    assert prompt["tensor"][0, :4].tolist() == [300, 301, S1, S1] and prompt["is_input"][0, :3].all()
    assert prompt["is_target"][0].nonzero().min() == 3
    with pytest.raises(ValueError, match="no sentinel"):
        sequence_target(CAPTION, [[300, 301]])
    with pytest.raises(ValueError, match="pixels cannot be generated"):
        empty_target(REGISTRY["rgb@32"], 2)


def test_full_inputs_and_emptied_conditioning():
    ids = torch.tensor([[300, 301, EOS_ID, PAD_ID], [302, EOS_ID, PAD_ID, PAD_ID]])
    text = full_input(CAPTION, ids)
    assert text["is_input"].sum(1).tolist() == [3, 2] and not text["is_target"].any()
    assert text["tensor"].shape == (2, CAPTION.num_positions())
    emptied = empty_conditioning(CAPTION, text)
    assert emptied["tensor"][:, 0].tolist() == [S1, S1] and emptied["is_input"].sum(1).tolist() == [1, 1]
    pixels = full_input(REGISTRY["rgb@32"], torch.randn(2, 3, 32, 32))
    assert pixels["is_input"].shape == (2, 16) and pixels["is_input"].all()
    assert not empty_conditioning(REGISTRY["rgb@32"], pixels)["is_input"].any()
    codes = full_input(REGISTRY["tok_rgb@32"], torch.randint(64, (2, 4, 4)))
    assert codes["tensor"].shape == (2, 16) and codes["is_input"].all()
    with pytest.raises(ValueError, match="codes must be integer"):
        full_input(REGISTRY["tok_rgb@32"], torch.zeros(2, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="max_tokens"):
        full_input(CAPTION, torch.ones(2, 7, dtype=torch.long))


def test_merged_sequence_becomes_a_full_input_cut_at_max_tokens():
    entry = sequence_target(CAPTION, [[300, S1], [S1]])
    generated = torch.tensor([[S1, 400, 401, S2, 999, 998], [S1, 402, 403, 404, 405, 406]])
    merged = merged_sequence_input(CAPTION, entry, generated)
    assert merged["tensor"][0, :4].tolist() == [300, 400, 401, PAD_ID]
    assert merged["tensor"][1, :6].tolist() == [402, 403, 404, 405, 406, PAD_ID]
    assert merged["is_input"].sum(1).tolist() == [3, 5] and not merged["is_target"].any()


def test_generation_batch_adds_empty_targets_and_checks_inputs():
    pixels = full_input(REGISTRY["rgb@32"], torch.randn(2, 3, 32, 32))
    batch = generation_batch(REGISTRY, {"rgb@32": pixels}, ["tok_rgb@32", "caption"], 2, cond_domains=["rgb@32"])
    assert list(batch) == ["rgb@32", "tok_rgb@32", "caption"] and batch["tok_rgb@32"]["is_target"].all()
    with pytest.raises(ValueError, match="no input given for the conditioning modalities"):
        generation_batch(REGISTRY, {}, ["caption"], 2, cond_domains=["rgb@32"])
    with pytest.raises(ValueError, match="unknown modalities"):
        generation_batch(REGISTRY, {"rgb@32": pixels}, ["tok_depth@32"], 2)
    with pytest.raises(ValueError, match="share one batch size"):
        generation_batch(REGISTRY, {"rgb@32": pixels}, ["caption"], 3)
