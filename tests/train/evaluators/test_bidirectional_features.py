"""Features of a prefix-causal (AIM) encoder for probing: the probe's batch_transform gives every image a prefix of
all its patches, which runs the encoder exactly as without a mask (bidirectional); without one, the model's missing
input is named. Probes of different labels on the same images share one feature extraction."""

import pytest
import torch

from polymodal.config import instantiate, load_config
from polymodal.data.multimodal.prefix import FixedPrefixLengths
from polymodal.train.evaluators import EvalContext, EvaluatorFailed, ImageSplit, LinearProbe, run_evaluators
from polymodal.train.evaluators.features import image_features

SIZE = {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "num_heads": 4, "head_dim": 32, "head_depth": 1}


@pytest.fixture(scope="module")
def aim() -> torch.nn.Module:
    """configs/aimv1's model at toy size: 16 patches."""
    cfg = load_config("aimv1/tiny", [f"constants.{key}={value}" for key, value in SIZE.items()])
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def bidirectional_reference(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The preprocessor's tokens through the trunk's transformer with no mask at all."""
    vit = model.preprocessor.blocks[0]
    tokens = vit({"rgb": images})["tokens"]
    return model.trunk.transformer(tokens, None, False, None, None)


def test_a_prefix_of_all_patches_gives_the_unmasked_encoder_features(aim, eval_data, single_thread):
    split = ImageSplit(str(eval_data["folder"]), split="val", image_size=32)
    context = EvalContext(aim, torch.device("cpu"))
    features = image_features(context, split, "tokens", batch_transform=FixedPrefixLengths(16))["features"]
    expected = bidirectional_reference(aim, split.load(range(len(split)))["rgb"])
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    causal = image_features(context, split, "tokens", batch_transform=FixedPrefixLengths(1))["features"]
    assert not torch.allclose(causal, expected, atol=1e-3)  # the prefix mask is really applied otherwise


def test_a_probe_of_the_aim_encoder_without_prefix_lengths_names_the_missing_input(aim, eval_data, single_thread):
    folder = str(eval_data["folder"])
    train, val = {"location": folder, "split": "train", "image_size": 32}, {"location": folder, "image_size": 32}
    sweep = {"learning_rates": [0.1], "weight_decays": [0.0], "epochs": 2}
    context = EvalContext(aim, torch.device("cpu"))
    with pytest.raises(EvaluatorFailed, match="evaluator 'probe' failed: KeyError: 'prefix_lengths'"):
        run_evaluators({"probe": LinearProbe(train, val, "tokens", pool="mean", sweep=sweep)}, context)
    bidirectional = FixedPrefixLengths(16)
    probe = LinearProbe(train, val, "tokens", pool="mean", sweep=sweep, batch_transform=bidirectional)
    assert 0.0 <= run_evaluators({"probe": probe}, context)["probe/accuracy"] <= 1.0


def test_probes_of_different_labels_on_the_same_images_share_one_feature_extraction(aim, eval_data, single_thread):
    folder, sweep = str(eval_data["folder"]), {"learning_rates": [0.1], "weight_decays": [0.0], "epochs": 2}

    def probe(attribute: str | None) -> LinearProbe:
        splits = [
            {"location": folder, "split": name, "image_size": 32, "attribute": attribute} for name in ("train", "val")
        ]
        return LinearProbe(*splits, "tokens", pool="mean", sweep=sweep, batch_transform=FixedPrefixLengths(16))

    calls = []
    hook = aim.register_forward_hook(lambda *_: calls.append(1))
    try:
        context = EvalContext(aim, torch.device("cpu"))
        together = run_evaluators({"count": probe(None), "colour": probe("colour")}, context)
        assert len(calls) == 2  # one batch of train images, one of val images, for both probes
        alone = {
            **run_evaluators({"count": probe(None)}, context),
            **run_evaluators({"colour": probe("colour")}, context),
        }
    finally:
        hook.remove()
    assert together == alone
    count_labels = ImageSplit(folder, split="val", image_size=32).load(range(11))["label"]
    colour_labels = ImageSplit(folder, split="val", image_size=32, attribute="colour").load(range(11))["label"]
    assert not torch.equal(count_labels, colour_labels)  # the two probes really read different labels
