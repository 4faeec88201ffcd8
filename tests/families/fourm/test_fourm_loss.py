"""FourMLoss against a plain per-modality cross-entropy."""

import pytest
import torch
import torch.nn.functional as F

from polymodal.families.fourm.loss import FourMLoss


def outputs(counts: dict[str, int], vocab: dict[str, int], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = {name: torch.randn(n, vocab[name], generator=generator, requires_grad=True) for name, n in counts.items()}
    targets = {name: torch.randint(0, vocab[name], (n,), generator=generator) for name, n in counts.items()}
    return {"logits": logits, "targets": targets}


VOCAB = {"caption": 50, "tok_rgb": 7, "tok_depth": 11}


def test_modality_mode_averages_modalities_with_targets():
    data = outputs({"caption": 5, "tok_rgb": 20, "tok_depth": 0}, VOCAB)
    loss, metrics = FourMLoss()(data)
    per_modality = [F.cross_entropy(data["logits"][m], data["targets"][m]) for m in ("caption", "tok_rgb")]
    torch.testing.assert_close(loss, sum(per_modality) / 2)
    assert metrics["tok_depth/tokens"] == 0 and metrics["tok_rgb/tokens"] == 20
    torch.testing.assert_close(metrics["caption/loss"], per_modality[0])
    hits = (data["logits"]["tok_rgb"].argmax(-1) == data["targets"]["tok_rgb"]).float().mean()
    torch.testing.assert_close(metrics["tok_rgb/accuracy"], hits)
    upstream, _ = FourMLoss(count_empty_modalities=True)(data)  # upstream's denominator counted tok_depth
    torch.testing.assert_close(upstream, sum(per_modality) / 3)


def test_token_mode_weights_by_token_count_not_vocabulary():
    data = outputs({"caption": 5, "tok_rgb": 20}, VOCAB)
    loss, _ = FourMLoss(mode="token")(data)
    everything = [F.cross_entropy(data["logits"][m], data["targets"][m], reduction="sum") for m in data["logits"]]
    torch.testing.assert_close(loss, sum(everything) / 25)
    with_z, metrics = FourMLoss(mode="token", z_loss_weight=0.01)(data)
    log_z_squared = sum(torch.logsumexp(data["logits"][m], -1).square().sum() for m in data["logits"]) / 25
    torch.testing.assert_close(metrics["z_loss"], 0.01 * log_z_squared)
    torch.testing.assert_close(with_z, loss + 0.01 * log_z_squared)


def test_modality_weights_scale_each_modalitys_part_of_the_mean():
    data = outputs({"caption": 5, "tok_rgb": 20, "tok_depth": 0}, VOCAB)
    means = {m: F.cross_entropy(data["logits"][m], data["targets"][m]) for m in ("caption", "tok_rgb")}
    weights = {"caption": 4.0, "tok_depth": 2.0}
    loss, metrics = FourMLoss(modality_weights=weights)(data)
    torch.testing.assert_close(loss, (4.0 * means["caption"] + means["tok_rgb"]) / 5.0)
    torch.testing.assert_close(metrics["caption/loss"], means["caption"])  # the metrics stay unweighted
    upstream, _ = FourMLoss(count_empty_modalities=True, modality_weights=weights)(data)
    torch.testing.assert_close(upstream, (4.0 * means["caption"] + means["tok_rgb"]) / 7.0)
    token, _ = FourMLoss(mode="token", modality_weights=weights)(data)
    torch.testing.assert_close(token, (4.0 * 5 * means["caption"] + 20 * means["tok_rgb"]) / (4.0 * 5 + 20))
    torch.testing.assert_close(FourMLoss(modality_weights={"tok_rgb": 1.0})(data)[0], FourMLoss()(data)[0])


def test_heads_without_targets_still_get_a_zero_gradient():
    data = outputs({"caption": 5, "tok_depth": 0}, VOCAB)
    weight = torch.randn(11, 4, requires_grad=True)
    data["logits"]["tok_depth"] = torch.zeros(0, 4) @ weight.T
    FourMLoss()(data)[0].backward()
    assert weight.grad is not None and (weight.grad == 0).all()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="mode must be one of"):
        FourMLoss(mode="mod")
    for weight in (0.0, -1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="modality_weights must be finite and > 0"):
            FourMLoss(modality_weights={"caption": weight})
    data = outputs({"caption": 5}, VOCAB)
    with pytest.raises(ValueError, match=r"modality_weights name modalities that are not targets: \['tok_semseg'\]"):
        FourMLoss(modality_weights={"tok_semseg": 2.0})(data)
    data["targets"]["caption"] = data["targets"]["caption"][:3]
    with pytest.raises(ValueError, match="modality 'caption': logits"):
        FourMLoss()(data)
