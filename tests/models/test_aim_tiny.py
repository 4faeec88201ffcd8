"""A tiny AIM: ViT preprocessor -> prefix-causal mask -> transformer trunk -> MLP pixel head -> next-patch loss,
fed by the resumable loader with random prefix lengths for training and a fixed prefix for validation."""

import warnings

import pytest
import torch

from polymodal.data.multimodal.loader import ResumableLoader
from polymodal.data.multimodal.prefix import FixedPrefixLengths, RandomPrefixLengths
from polymodal.models.layers.block import build_transformer
from polymodal.models.layers.init import init_weights
from polymodal.models.meta import MetaModel, call_block, checking_keys
from polymodal.models.mlp_head import MLPHead
from polymodal.models.parts import PrefixCausalMask, TransformerTrunk
from polymodal.models.vit import ViTPreprocessor
from polymodal.objectives.pixel import NextPatchPixelLoss

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one intra-op thread on the shared CPU

IMAGE, PATCH, DIM = 16, 4, 32
GRID = (IMAGE // PATCH, IMAGE // PATCH)
NUM_PATCHES = GRID[0] * GRID[1]


class Gradients:
    """Sample i: a colour gradient with slopes and offsets drawn from seed i (every patch is a shifted copy)."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, sample_id: int) -> dict:
        slopes = torch.rand(3, 3, generator=torch.Generator().manual_seed(sample_id))
        ramp = torch.linspace(0, 1, IMAGE)
        image = slopes[:, 0, None, None] * ramp[None, :, None] + slopes[:, 1, None, None] * ramp[None, None, :]
        return {"image": image + slopes[:, 2, None, None]}


def build_aim(attention: str = "sdpa") -> MetaModel:
    torch.manual_seed(0)
    model = MetaModel(
        preprocessor=[
            ViTPreprocessor(IMAGE, PATCH, DIM, cls_token=True, num_registers=2, patch_norm="layernorm"),
            PrefixCausalMask(),
        ],
        trunk=TransformerTrunk(
            build_transformer(DIM, depth=2, num_heads=4, mlp="gelu", norm="layernorm", rope=None),
            read_key="tokens", write_key="tokens", position_key=None, attention=attention,
        ),
        head=MLPHead(DIM, PATCH * PATCH * 3, depth=2, grid_size=GRID),
    )  # fmt: skip
    init_weights(model, scheme="xavier")
    return model


def test_a_flex_attention_trunk_matches_the_dense_prefix_mask():
    """FlexAttention's prefix-causal block mask against the dense mask, forward only (no CPU backward)."""
    batch = next(loader(RandomPrefixLengths(NUM_PATCHES)))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention on the CPU says it is unfused
        flex = build_aim("flex").eval()(dict(batch))["tokens"]
        dense = build_aim().eval()(dict(batch))["tokens"]
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def loader(transform, **options) -> ResumableLoader:
    return ResumableLoader(Gradients(), batch_size=8, seed=0, batch_transform=transform, **options)


def evaluate(model: MetaModel, objective: NextPatchPixelLoss, transform) -> float:
    model.eval()
    with torch.no_grad():
        losses = [objective(model(batch))[0] for batch in loader(transform, shuffle=False).val_batches(2)]
    model.train()
    return torch.stack(losses).mean().item()


def test_tiny_aim_trains_with_finite_train_and_validation_loss():
    model, objective = build_aim(), NextPatchPixelLoss(PATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train = loader(RandomPrefixLengths(NUM_PATCHES))
    validation = FixedPrefixLengths(1)
    before = evaluate(model, objective, validation)
    losses = []
    for _ in range(30):
        with checking_keys():  # every block touches only the keys it declares
            loss, _ = call_block(objective, call_block(model, next(train)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    after = evaluate(model, objective, validation)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor([before, after])).all()
    assert after < 0.5 * before, (before, after)
    assert evaluate(model, objective, validation) == after  # validation is deterministic
    assert evaluate(model, objective, FixedPrefixLengths(NUM_PATCHES)) == 0.0  # fully bidirectional: finite, 0


def test_a_prediction_never_sees_the_patch_it_predicts():
    """With prefix K, the prediction at position i >= K - 1 (scored against patch i + 1) must not change when the
    patches after i change, through the CLS and register tokens or otherwise."""
    model = build_aim().eval()
    images = torch.stack([Gradients()[i]["image"] for i in range(2)])
    prefix = torch.tensor([3, 9])
    reference = model({"image": images, "prefix_lengths": prefix})["pixel_pred"]
    for cut in (5, 11):  # perturb every patch from grid row `cut // 4`, column `cut % 4` onwards
        changed = images.clone()
        row, col = divmod(cut, GRID[1])
        changed[:, :, row * PATCH : (row + 1) * PATCH, col * PATCH :] += 1.0
        changed[:, :, (row + 1) * PATCH :] += 1.0
        pred = model({"image": changed, "prefix_lengths": prefix})["pixel_pred"]
        for b, k in enumerate(prefix.tolist()):
            if cut >= k:
                torch.testing.assert_close(pred[b, :cut], reference[b, :cut])
            assert not torch.allclose(pred[b, cut:], reference[b, cut:])
