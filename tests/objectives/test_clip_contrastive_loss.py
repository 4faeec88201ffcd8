"""CLIPContrastiveLoss against a plain computation and open_clip's ClipLoss; over 2 real processes (gloo) with the
gather through the published data-parallel group, it matches one process on the global batch (also with NegCLIP's
hard negatives), and a group that leaves the other rank out gathers nothing from it (the loss never gathers over
WORLD)."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from parallel_runs import spawn_gloo

from polymodal.distributed.groups import set_data_parallel_group
from polymodal.objectives.contrastive import CLIPContrastiveLoss

WORLD, LOCAL_BATCH, DIM = 2, 3, 8
OPEN_CLIP = importlib.util.find_spec("open_clip")
HAS_OPEN_CLIP = OPEN_CLIP is not None


def open_clip_loss_class():
    """open_clip's ``ClipLoss``, from its self-contained ``loss.py``: importing the package pulls in timm and
    transformers, which takes a minute on a busy machine."""
    spec = importlib.util.spec_from_file_location("open_clip_loss", Path(OPEN_CLIP.origin).parent / "loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ClipLoss


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(WORLD * LOCAL_BATCH, DIM, generator=generator), dim=-1)
    text = F.normalize(image + 0.7 * torch.randn(WORLD * LOCAL_BATCH, DIM, generator=generator), dim=-1)
    return image, text, torch.tensor(2.3)  # log of the logit scale


def hard_negatives() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch's hard negative captions (near their captions) and which of them are real ones."""
    _, text, _ = global_batch()
    negatives = F.normalize(text + 0.5 * torch.randn(text.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
    return negatives, torch.tensor([True, False, True, True, True, False])


def loss_and_grads(image, text, log_scale, loss=None, negatives=None):
    """Our loss (or ``loss``, called as open_clip's) on leaf copies, and the gradients of features and log scale;
    ``negatives``: (hard negative captions, valid) appended to the text rows (and their gradient rows) for our loss
    with hard negatives."""
    if negatives is not None:
        text = torch.cat([text, negatives[0]])
    image, text, log_scale = (t.clone().requires_grad_() for t in (image, text, log_scale))
    if loss is None and negatives is not None:
        batch = {"image_embeds": image, "text_embeds": text, "logit_scale": log_scale.exp()}
        value, metrics = CLIPContrastiveLoss(hard_negative_key="valid")({**batch, "valid": negatives[1]})
    elif loss is None:
        value, metrics = CLIPContrastiveLoss()(
            {"image_embeds": image, "text_embeds": text, "logit_scale": log_scale.exp()}
        )
    else:
        value, metrics = loss(image, text, log_scale.exp()), {}
    value.backward()
    return value.detach(), image.grad, text.grad, log_scale.grad, metrics


def plain_clip_loss(image, text, scale):
    """Mean over pairs of -log p(matching text | image) and -log p(matching image | text), written out."""
    similarity = scale * image @ text.T
    image_to_text = -(similarity.diag() - similarity.exp().sum(dim=1).log())
    text_to_image = -(similarity.diag() - similarity.exp().sum(dim=0).log())
    return (image_to_text.mean() + text_to_image.mean()) / 2


def plain_negclip_loss(image, text, negatives, valid, scale):
    """NegCLIP written out: each image's candidates are every caption and every valid hard negative; each
    caption's candidates are every image."""
    candidates = torch.cat([text, negatives[valid]])
    image_to_text = -torch.stack(
        [scale * image[i] @ text[i] - (scale * candidates @ image[i]).exp().sum().log() for i in range(len(image))]
    )
    similarity = scale * image @ text.T
    text_to_image = -(similarity.diag() - similarity.exp().sum(dim=0).log())
    return (image_to_text.mean() + text_to_image.mean()) / 2


def test_hard_negatives_match_the_plain_computation():
    image, text, log_scale = global_batch()
    negatives, valid = hard_negatives()
    ours = loss_and_grads(image, text, log_scale, negatives=(negatives, valid))
    plain = loss_and_grads(
        image, text, log_scale, lambda i, t, s: plain_negclip_loss(i, *t.chunk(2), valid, s), (negatives, valid)
    )
    for got, want in zip(ours[:4], plain[:4], strict=True):
        torch.testing.assert_close(got, want)
    wins = ((image * text).sum(-1) > (image * negatives).sum(-1))[valid]
    assert ours[4]["hard_negative_accuracy"].item() == pytest.approx(wins.float().mean().item())
    assert ours[0] > loss_and_grads(image, text, log_scale)[0]  # the extra candidates make it harder


def test_hard_negative_batches_need_twice_the_text_rows():
    loss = CLIPContrastiveLoss(hard_negative_key="valid")
    batch = {"image_embeds": torch.randn(3, 4), "text_embeds": torch.randn(3, 4), "logit_scale": torch.tensor(1.0)}
    with pytest.raises(ValueError, match="2B rows"):
        loss({**batch, "valid": torch.ones(3, dtype=torch.bool)})
    doubled = {**batch, "text_embeds": torch.randn(6, 4)}
    with pytest.raises(ValueError, match=r"valid must be bool \[B=3\]"):
        loss({**doubled, "valid": torch.ones(6, dtype=torch.bool)})
    plain, _ = loss(batch)  # a batch without the key (validation) gets the plain loss
    torch.testing.assert_close(plain, CLIPContrastiveLoss()(batch)[0])


def test_single_process_loss_matches_the_plain_computation():
    image, text, log_scale = global_batch()
    loss, image_grad, text_grad, scale_grad, metrics = loss_and_grads(image, text, log_scale)
    expected = loss_and_grads(image, text, log_scale, lambda i, t, s: plain_clip_loss(i, t, s))
    torch.testing.assert_close(loss, expected[0])
    for got, want in zip((image_grad, text_grad, scale_grad), expected[1:4], strict=True):
        torch.testing.assert_close(got, want)
    assert metrics["logit_scale"].item() == pytest.approx(log_scale.exp().item())
    perfect = CLIPContrastiveLoss()({"image_embeds": image, "text_embeds": image, "logit_scale": torch.tensor(50.0)})
    assert perfect[1]["image_to_text_accuracy"] == perfect[1]["text_to_image_accuracy"] == 1.0


@pytest.mark.skipif(not HAS_OPEN_CLIP, reason="open_clip is not installed")
def test_single_process_loss_matches_open_clip():
    image, text, log_scale = global_batch()
    ours = loss_and_grads(image, text, log_scale)
    theirs = loss_and_grads(image, text, log_scale, open_clip_loss_class()())
    for got, want in zip(ours[:4], theirs[:4], strict=True):
        torch.testing.assert_close(got, want)


def test_bad_shapes_are_clear_errors():
    loss = CLIPContrastiveLoss()
    with pytest.raises(ValueError, match=r"text_embeds \[3, D\]"):
        loss({"image_embeds": torch.randn(3, 4), "text_embeds": torch.randn(2, 4), "logit_scale": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="scalar"):
        loss({"image_embeds": torch.randn(3, 4), "text_embeds": torch.randn(3, 4), "logit_scale": torch.ones(2)})


def worker(rank: int, world: int) -> dict[str, object]:
    """This rank's loss and gradients under each group, keyed by case, and the error when no group is published."""
    image, text, log_scale = global_batch()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    image, text = image[rows], text[rows]
    results = {}
    try:
        CLIPContrastiveLoss()({"image_embeds": image, "text_embeds": text, "logit_scale": log_scale.exp()})
    except RuntimeError as error:
        results["unpublished"] = str(error)
    both = dist.new_group(list(range(world)))  # every rank creates every group, in the same order
    alone = [dist.new_group([r]) for r in range(world)]
    set_data_parallel_group(both)
    results["dp"] = loss_and_grads(image, text, log_scale)[:4]
    negatives, valid = hard_negatives()
    results["negclip"] = loss_and_grads(image, text, log_scale, negatives=(negatives[rows], valid[rows]))[:4]
    if HAS_OPEN_CLIP:
        clip_loss = open_clip_loss_class()(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        results["open_clip"] = loss_and_grads(image, text, log_scale, clip_loss)[:4]
    set_data_parallel_group(alone[rank])
    results["alone"] = loss_and_grads(image, text, log_scale)[:4]
    return results


@pytest.fixture(scope="module")
def two_rank_results() -> dict[int, dict[str, object]]:
    return spawn_gloo(worker, WORLD)


@pytest.mark.parametrize("case", ["dp", "negclip"])
def test_two_ranks_equal_one_process_on_the_global_batch(two_rank_results, case):
    image, text, log_scale = global_batch()
    negatives = hard_negatives() if case == "negclip" else None
    loss, image_grad, text_grad, scale_grad, _ = loss_and_grads(image, text, log_scale, negatives=negatives)
    per_rank = [two_rank_results[rank][case] for rank in range(WORLD)]
    if negatives is not None:  # each rank's text gradient rows: its captions, then its hard negatives
        captions, negative_rows = text_grad.chunk(2)
        pairs = zip(captions.chunk(WORLD), negative_rows.chunk(WORLD), strict=True)
        text_grad = torch.cat([torch.cat(pair) for pair in pairs])
    tolerance = dict(atol=1e-6, rtol=1e-6)
    # each rank's loss is the mean over its rows: their mean is the global loss
    torch.testing.assert_close(torch.stack([r[0] for r in per_rank]).mean(), loss, **tolerance)
    # the gather's backward sums every rank's use of a slice: WORLD x the one-process gradient of those rows
    torch.testing.assert_close(torch.cat([r[1] for r in per_rank]) / WORLD, image_grad, **tolerance)
    torch.testing.assert_close(torch.cat([r[2] for r in per_rank]) / WORLD, text_grad, **tolerance)
    # the logit scale is not gathered: the data-parallel mean of its gradients is the one-process gradient
    torch.testing.assert_close(torch.stack([r[3] for r in per_rank]).mean(), scale_grad, **tolerance)


@pytest.mark.skipif(not HAS_OPEN_CLIP, reason="open_clip is not installed")
def test_two_ranks_match_open_clip_local_loss_gather_with_grad(two_rank_results):
    for rank in range(WORLD):
        for got, want in zip(two_rank_results[rank]["dp"], two_rank_results[rank]["open_clip"], strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_a_group_without_the_other_rank_gathers_nothing_from_it(two_rank_results):
    image, text, log_scale = global_batch()
    for rank in range(WORLD):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local = loss_and_grads(image[rows], text[rows], log_scale)[:4]
        for got, want in zip(two_rank_results[rank]["alone"], local, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(two_rank_results[rank]["alone"][0], two_rank_results[rank]["dp"][0])


def test_several_processes_without_a_published_group_is_an_error(two_rank_results):
    for rank in range(WORLD):
        assert "no data-parallel group was published" in two_rank_results[rank]["unpublished"]
