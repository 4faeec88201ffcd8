import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
)

from polymodal.families.fourm.modalities import ModalityRegistry
from polymodal.families.fourm.model import FourM
from polymodal.train.optim import build_optimizer, freeze_parameters, param_groups_summary


class RMSNorm(nn.Module):
    """Custom norm recognised by its class name; its 2-D gain would otherwise look decayable."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class TinyModel(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8, head_first: bool = False) -> None:
        super().__init__()
        if head_first:
            self.head = nn.Linear(dim, vocab, bias=False)
        self.embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.expert_weights = nn.Parameter(torch.randn(2, dim, dim))
        self.conv = nn.Conv2d(3, dim, 2)
        self.patch_to_token = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = RMSNorm(dim)
        self.ln = nn.LayerNorm(dim)
        if not head_first:
            self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight


DECAYED = {"conv.weight", "patch_to_token.weight", "proj.weight", "expert_weights"}
NOT_DECAYED_EXCEPT_TIED = {
    "pos_embed",
    "cls_token",
    "conv.bias",
    "patch_to_token.bias",
    "proj.bias",
    "norm.weight",
    "ln.weight",
    "ln.bias",
}


def names_by_decay(optimizer):
    decayed, not_decayed = set(), set()
    for group in optimizer.param_groups:
        (decayed if group["weight_decay"] > 0 else not_decayed).update(group["param_names"])
    return decayed, not_decayed


@pytest.mark.parametrize("head_first", [False, True])
def test_weight_decay_assignment(head_first):
    model = TinyModel(head_first=head_first)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    decayed, not_decayed = names_by_decay(optimizer)
    tied_name = "head.weight" if head_first else "embed.weight"
    assert decayed == DECAYED
    assert not_decayed == NOT_DECAYED_EXCEPT_TIED | {tied_name}
    all_params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.05, 0.0}
    assert all(group["base_lr"] == 1e-3 and group["lr_scale"] == 1.0 for group in optimizer.param_groups)


def test_one_step_matches_naive_adamw():
    """First AdamW step: p <- p * (1 - lr * wd) - lr * g / (|g| + eps), wd only on decayed params."""
    torch.manual_seed(0)
    model = TinyModel()
    lr, wd, eps = 0.1, 0.5, 1e-8
    optimizer = build_optimizer(model, lr=lr, weight_decay=wd, eps=eps, lr_scales={"proj.*": 0.25})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        step_lr = lr * (0.25 if name.startswith("proj.") else 1.0)
        decay = wd if name in DECAYED else 0.0
        g = grads[name]
        expected = before[name] * (1 - step_lr * decay) - step_lr * g / (g.abs() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)


def test_lr_scales_split_groups_first_match_wins():
    model = TinyModel()
    optimizer = build_optimizer(model, lr=1e-2, lr_scales={"proj.weight": 0.1, "proj.*": 0.5, "conv.*": 0.5})
    by_key = {(g["weight_decay"] > 0, g["lr_scale"]): set(g["param_names"]) for g in optimizer.param_groups}
    assert by_key == {
        (True, 1.0): DECAYED - {"proj.weight", "conv.weight"},
        (True, 0.1): {"proj.weight"},
        (True, 0.5): {"conv.weight"},
        (False, 1.0): NOT_DECAYED_EXCEPT_TIED - {"proj.bias", "conv.bias"} | {"embed.weight"},
        (False, 0.5): {"proj.bias", "conv.bias"},
    }
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-2 * group["lr_scale"])


def test_frozen_parameters_are_left_out():
    model = TinyModel()
    frozen = freeze_parameters(model, ["conv.*", "pos_embed"])
    assert frozen == ["pos_embed", "conv.weight", "conv.bias"]
    optimizer = build_optimizer(model, lr=1e-3)
    names = {name for group in optimizer.param_groups for name in group["param_names"]}
    assert not names & {"conv.weight", "conv.bias", "pos_embed"}
    assert not model.conv.weight.requires_grad and not model.pos_embed.requires_grad
    assert model.proj.weight.requires_grad and "proj.weight" in names


def test_tied_weight_frozen_through_either_name():
    model = TinyModel()
    assert freeze_parameters(model, ["head.*"]) == ["embed.weight"]
    assert not model.embed.weight.requires_grad


@pytest.mark.parametrize(
    "patterns, message",
    [
        (["convv.*"], r"^freeze pattern 'convv.\*' matches no parameter"),
        (["*"], r"^freeze patterns \['\*'\] leave no trainable parameter in TinyModel$"),
    ],
)
def test_bad_freeze_patterns_raise(patterns, message):
    model = TinyModel()
    with pytest.raises(ValueError, match=message):
        freeze_parameters(model, patterns)
    assert all(param.requires_grad for param in model.parameters())


def test_fully_frozen_model_has_nothing_to_optimise():
    model = TinyModel().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters in TinyModel"):
        build_optimizer(model, lr=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr_scales": {"trunk.*": 0.5}}, "lr_scales pattern 'trunk.\\*'"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"lr_scales": {"proj.*": 0.0}}, "lr_scales\\['proj.\\*'\\]"),
        ({"fused": True, "foreach": True}, "fused=True and foreach=True"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(TinyModel(), **({"lr": 1e-3} | kwargs))


def test_model_without_parameters_raises():
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer(nn.ReLU(), lr=1e-3)


def test_cpu_defaults_to_fused_and_steps_like_foreach():
    fused_model, foreach_model = TinyModel(), TinyModel()
    foreach_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, lr=1e-2)
    foreach = build_optimizer(foreach_model, lr=1e-2, foreach=True)
    assert fused.defaults["fused"] and not foreach.defaults["fused"]
    for step in range(3):
        for model, optimizer in ((fused_model, fused), (foreach_model, foreach)):
            sum((param.sin() * (step + 1)).sum() for param in model.parameters()).backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), b in zip(fused_model.named_parameters(), foreach_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_hydra_partial_construction():
    partial = instantiate(
        {
            "_target_": "polymodal.train.optim.build_optimizer",
            "_partial_": True,
            "lr": 3e-4,
            "weight_decay": 0.2,
            "betas": [0.9, 0.99],
            "no_decay": ["*pos_embed*", "*cls_token*"],
            "lr_scales": {"proj.*": 0.5},
        }
    )
    optimizer = partial(model=TinyModel())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.99)
    assert {g["lr_scale"] for g in optimizer.param_groups} == {1.0, 0.5}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.2, 0.0}


def test_summary_lists_every_group():
    optimizer = build_optimizer(TinyModel(), lr=1e-3, weight_decay=0.1)
    lines = param_groups_summary(optimizer).splitlines()
    assert len(lines) == len(optimizer.param_groups) == 2
    decayed_line = next(line for line in lines if "weight_decay=0.1 " in line)
    assert "proj.weight" in decayed_line and "pos_embed" not in decayed_line


def test_fourm_embeddings_and_tokens_are_not_decayed():
    """Upstream 4M decays mod_emb, mask_token and learned pos embs (its bug 11); here only matmul weights decay."""
    registry = ModalityRegistry.from_config(
        ["rgb@32", "tok_rgb@32", "tok_dinov2_global", "caption"],
        {
            "rgb@32": {"patch_size": 8},
            "tok_rgb@32": {"vocab_size": 16, "patch_size": 8},
            "tok_dinov2_global": {"vocab_size": 16},  # learned position embeddings
            "caption": {"vocab_size": 20, "max_tokens": 4},
        },
    )
    model = FourM(registry, dim=16, encoder_depth=1, decoder_depth=1, num_heads=2, num_register_tokens=2)
    decayed, not_decayed = names_by_decay(build_optimizer(model, lr=1e-3, weight_decay=0.05))
    assert sum(name.endswith("mod_emb") for name in not_decayed) == 4  # one per modality, shared enc/dec
    assert sum(name.endswith("pos_emb") for name in not_decayed) == 2  # tok_dinov2_global's learned tables
    assert {"mask_token", "register_tokens"} <= not_decayed
    linears = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    tied = {"decoder_embeddings.caption.to_logits.weight"}  # the caption head is its token table
    assert decayed == linears - tied
    assert decayed | not_decayed == {name for name, _ in model.named_parameters()}


class DeclaresNoDecay(TinyModel):
    def no_weight_decay(self) -> set[str]:
        return {"proj.weight", "expert_*"}


def test_model_declared_no_decay_names_are_exempt_whatever_holds_them():
    decayed, not_decayed = names_by_decay(build_optimizer(DeclaresNoDecay(), lr=1e-3))
    assert decayed == DECAYED - {"proj.weight", "expert_weights"}
    assert {"proj.weight", "expert_weights"} <= not_decayed


def test_model_declared_pattern_that_matches_nothing_raises():
    class Typo(TinyModel):
        def no_weight_decay(self) -> set[str]:
            return {"projj.weight"}

    with pytest.raises(ValueError, match=r"Typo.no_weight_decay\(\) pattern 'projj.weight'"):
        build_optimizer(Typo(), lr=1e-3)
    TinyModel.no_weight_decay = lambda self: "proj.weight"
    try:
        with pytest.raises(ValueError, match="collection of name patterns"):
            build_optimizer(TinyModel(), lr=1e-3)
    finally:
        del TinyModel.no_weight_decay


class TinyViT(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, dim))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)


LAYER_DECAY = {"layer_decay": 0.5, "layer_blocks": "blocks", "layer_embeddings": ["patch_embed.*", "pos_embed"]}


def scale_and_layer_by_name(optimizer) -> dict[str, tuple[float, int]]:
    return {name: (g["lr_scale"], g["layer"]) for g in optimizer.param_groups for name in g["param_names"]}


def test_layer_decay_scales_match_the_plain_table():
    """3 blocks, decay 0.5: embeddings layer 0 (0.5^4), block i layer i+1 (0.5^(3-i)), norm/head layer 4 (1);
    times the lr_scales scale."""
    model = TinyViT()
    optimizer = build_optimizer(model, lr=1e-2, lr_scales={"head.*": 10.0, "blocks.0.1.*": 2.0}, **LAYER_DECAY)
    layers = {"patch_embed.weight": 0, "patch_embed.bias": 0, "pos_embed": 0, "norm.weight": 4, "norm.bias": 4}
    layers |= {"head.weight": 4, "head.bias": 4}
    layers |= {f"blocks.{i}.{j}.{kind}": i + 1 for i in range(3) for j in range(2) for kind in ("weight", "bias")}
    extra = {"head.weight": 10.0, "head.bias": 10.0, "blocks.0.1.weight": 2.0, "blocks.0.1.bias": 2.0}
    expected = {
        name: (pytest.approx(0.5 ** (4 - layer) * extra.get(name, 1.0)), layer) for name, layer in layers.items()
    }
    assert scale_and_layer_by_name(optimizer) == expected
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-2 * group["lr_scale"]) and group["base_lr"] == 1e-2
    assert {(g["weight_decay"] > 0, g["layer"]) for g in optimizer.param_groups} == {
        (decayed, layer) for layer in range(5) for decayed in (True, False)
    }


def test_tied_embedding_takes_the_lowest_layer_and_frozen_parameters_are_left_out():
    model = TinyModel()  # embed.weight is also head.weight
    model.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
    freeze_parameters(model, ["blocks.0.*", "cls_token"])
    optimizer = build_optimizer(
        model, lr=1e-3, layer_decay=0.8, layer_blocks="blocks", layer_embeddings=["embed.*", "pos_embed", "cls_token"]
    )
    table = scale_and_layer_by_name(optimizer)
    assert table["embed.weight"] == (pytest.approx(0.8**3), 0)
    assert table["pos_embed"] == (pytest.approx(0.8**3), 0)
    assert table["blocks.1.weight"] == (pytest.approx(0.8), 2)
    assert table["proj.weight"] == (1.0, 3)
    assert not any(name.startswith("blocks.0.") for name in table) and "cls_token" not in table


def test_summary_shows_layers_only_with_layer_decay():
    summary = param_groups_summary(build_optimizer(TinyViT(), lr=1e-3, **LAYER_DECAY))
    assert "layer=0" in summary and "layer=4" in summary
    assert "lr_scale=0.0625 layer=0" in summary
    assert "layer=" not in param_groups_summary(build_optimizer(TinyViT(), lr=1e-3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_decay": 0.0}, r"^layer_decay must be in \(0, 1\], got 0.0$"),
        ({"layer_decay": 1.5}, r"^layer_decay must be in \(0, 1\]"),
        ({"layer_blocks": None}, r"^layer_decay needs layer_blocks"),
        ({"layer_blocks": "blockz"}, r"^layer_blocks 'blockz' is not a module of TinyViT$"),
        ({"layer_blocks": "norm"}, r"^layer_blocks 'norm' is a LayerNorm, not a ModuleList or Sequential$"),
        ({"layer_embeddings": ["patch_embedd.*"]}, r"^layer_embeddings pattern 'patch_embedd.\*' matches no"),
        ({"layer_decay": None}, r"^layer_blocks / layer_embeddings are set but layer_decay is not$"),
    ],
)
def test_bad_layer_decay_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(TinyViT(), lr=1e-3, **(LAYER_DECAY | kwargs))


def test_activation_checkpointing_wrappers_do_not_change_parameter_names():
    """The trainer builds the optimizer after wrapping blocks for activation checkpointing: patterns and recorded
    names are the model's own names."""
    model = TinyViT()
    apply_activation_checkpointing(model, check_fn=lambda module: module in set(model.blocks))
    assert isinstance(model.blocks[0], CheckpointWrapper)
    optimizer = build_optimizer(model, lr=1e-3, lr_scales={"blocks.1.1.*": 0.5}, **LAYER_DECAY)
    assert scale_and_layer_by_name(optimizer)["blocks.1.1.weight"] == (pytest.approx(0.5 * 0.5**2), 2)
    assert {name for g in optimizer.param_groups for name in g["param_names"]} == {
        n for n, _ in TinyViT().named_parameters()
    }
