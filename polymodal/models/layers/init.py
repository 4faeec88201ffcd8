"""Weight initialisation schemes applied to a whole module tree.

Only in-place ``nn.init`` ops and ``reset_parameters`` are used, so this also initialises a model
built on the meta device and materialised with ``to_empty``. Results depend only on torch's global
RNG state (seed it for reproducible weights).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from polymodal.models.layers.moe import GroupedExperts

InitScheme = Literal["normal", "trunc_normal", "xavier"]
RESIDUAL_PROJECTIONS = ("attn.o_proj", "mlp.fc2")
DRAWN_MODULES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _draw(weight: Tensor, scheme: InitScheme, std: float) -> None:
    if scheme == "normal":
        nn.init.normal_(weight, mean=0.0, std=std)
    elif scheme == "trunc_normal":
        nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
    else:
        nn.init.xavier_uniform_(weight)


def _is_residual_projection(name: str) -> bool:
    return any(name == suffix or name.endswith("." + suffix) for suffix in RESIDUAL_PROJECTIONS)


def _draw_experts(experts: GroupedExperts, scheme: InitScheme, std: float, residual_scale: float) -> None:
    """Each expert's matrices as the Linear layers of a dense MLP (``w2`` is its residual output projection).

    The stacked ``[E, fan_in, fan_out]`` weight is drawn at once (the draws are independent per element; xavier's
    bound comes from one expert's fans), so a weight sharded along the experts initialises in place."""
    for weight, scale in ((experts.w1, 1.0), (experts.w3, 1.0), (experts.w2, residual_scale)):
        if weight is None:
            continue
        if scheme == "xavier":
            bound = scale * math.sqrt(6.0 / (weight.shape[1] + weight.shape[2]))
            nn.init.uniform_(weight, -bound, bound)
        else:
            _draw(weight, scheme, std * scale)
    for bias in (experts.b1, experts.b2):
        if bias is not None:
            nn.init.zeros_(bias)


@torch.no_grad()
def init_weights(
    module: nn.Module,
    scheme: InitScheme = "trunc_normal",
    std: float = 0.02,
    depth: int | None = None,
) -> None:
    """Initialise every ``Linear``, ``Embedding`` and convolution in ``module``; reset everything else.

    Schemes, for the weights of Linear / Embedding / Conv (a conv is treated as the linear map over
    its flattened kernel, as MAE does for its patch projection):

    * ``"normal"``: N(0, std²) — GPT-2 and BERT.
    * ``"trunc_normal"``: N(0, std²) truncated to ±2·std — timm ViT, MAE/AIM trunks, Llama-style trainers.
    * ``"xavier"``: Glorot-uniform, U(±sqrt(6 / (fan_in + fan_out))) (Glorot & Bengio 2010) — the
      original ViT / MAE / 4M linears; ``std`` is unused for it.

    Biases become 0 and an Embedding's ``padding_idx`` row becomes 0. Every other module that has a
    ``reset_parameters`` (norms -> weight 1 / bias 0, rotary tables -> recomputed, ...) is reset.

    ``depth`` (number of residual blocks) turns on the GPT-2 scaled init (Radford et al. 2019, also
    used by Megatron-LM and OLMo): the residual output projections ``attn.o_proj`` and ``mlp.fc2``
    get ``std / sqrt(2·depth)`` (for xavier, their Glorot draw is multiplied by ``1 / sqrt(2·depth)``),
    so the variance of the residual stream does not grow with depth. The stacked experts of a mixture-of-experts
    layer are drawn expert by expert like a dense MLP's linears (``w2`` as the residual projection).
    """
    if scheme not in ("normal", "trunc_normal", "xavier"):
        raise ValueError(f"scheme must be 'normal', 'trunc_normal' or 'xavier', got {scheme!r}")
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    residual_scale = 1.0 if depth is None else 1.0 / math.sqrt(2 * depth)

    for name, submodule in module.named_modules():
        if isinstance(submodule, DRAWN_MODULES):
            weight = submodule.weight
            scale = residual_scale if _is_residual_projection(name) else 1.0
            flat_weight = weight.view(weight.shape[0], -1)
            _draw(flat_weight, scheme, std * scale)
            if scheme == "xavier" and scale != 1.0:
                flat_weight.mul_(scale)
            if getattr(submodule, "bias", None) is not None:
                nn.init.zeros_(submodule.bias)
            if isinstance(submodule, nn.Embedding) and submodule.padding_idx is not None:
                weight[submodule.padding_idx].zero_()
        elif isinstance(submodule, GroupedExperts):
            _draw_experts(submodule, scheme, std, residual_scale)
        elif hasattr(submodule, "reset_parameters"):
            submodule.reset_parameters()
