"""AdamW with parameter groups split by weight decay, per-pattern learning-rate scale and layer-wise lr decay.

Weight-decay rule. A trainable parameter is decayed unless one of these holds:

1. it belongs to a normalisation layer: ``nn.LayerNorm``, ``nn.GroupNorm``, batch/instance norms, or any
   module whose class name ends with ``"Norm"`` (e.g. our ``RMSNorm``);
2. it is a bias: ``ndim < 2`` or its name ends with ``"bias"``;
3. it is an embedding table (weight of ``nn.Embedding`` / ``nn.EmbeddingBag``);
4. it is registered directly on a module that is not a Linear/Conv layer and its name matches one of the
   ``no_decay`` fnmatch patterns (learned tokens, position and modality embeddings, registers: the defaults
   cover ViT's ``pos_embed``/``cls_token``, 4M's ``pos_emb``/``mod_emb``/``mask_token``/``register_tokens``);
5. the model declares it: a ``model.no_weight_decay()`` method (timm's convention) returns fnmatch patterns of
   full parameter names that are never decayed, whatever module holds them.

So the ≥2-D weights of Linear/Conv layers are decayed, and so are other ≥2-D weights that match no pattern
(e.g. ``nn.MultiheadAttention.in_proj_weight`` or grouped MoE expert weights). A parameter reachable under
several names (tied weights) is optimised once and is exempt from decay if any of its names is exempt
(a tied embedding/output matrix is not decayed).

Patterns (``no_decay``, ``lr_scales``, ``layer_embeddings``, and :func:`freeze_parameters`'s) are matched
case-sensitively with ``fnmatch`` against full parameter names such as ``trunk.blocks.0.attn.qkv.weight``; a shared
parameter matches if any of its names does. Names are the model's own: activation-checkpointing wrappers add no
``_checkpoint_wrapped_module`` to them. For ``lr_scales`` the first matching pattern wins, so list specific patterns
before general ones.

Layer-wise learning-rate decay (BEiT-style fine-tuning), on when ``layer_decay`` is set. With ``L`` the number of
blocks in the module ``layer_blocks`` (a ``ModuleList``/``Sequential``), each parameter gets a layer id:

* ``i + 1`` if a name lies under ``{layer_blocks}.{i}.`` (block ``i``);
* ``0`` if a name matches a ``layer_embeddings`` pattern (patch/token embeddings, position embeddings, tokens);
* ``L + 1`` otherwise (final norm, head: everything after the trunk).

A parameter reachable under several names takes the lowest of their ids (a token table tied to the head is an
embedding). Its lr scale is ``layer_decay ** (L + 1 - layer)``, times its ``lr_scales`` scale.

Frozen parameters (``requires_grad=False``) are left out. Freeze with :func:`freeze_parameters` on the bare model,
before any data-parallel wrapper (the trainer does so for ``experiment.freeze``): DDP fixes at wrap time the
parameters whose gradients it waits for. Each group records ``param_names``, ``weight_decay``, ``lr_scale``
(the product of both scales), ``base_lr`` and, with layer decay, ``layer``; see :func:`param_groups_summary`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

DEFAULT_NO_DECAY_PATTERNS: tuple[str, ...] = (
    "*pos_emb*",
    "*mod_emb*",
    "*cls_token*",
    "*mask_token*",
    "*register*",
    "*_token*",
)

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_LINEAR_OR_CONV_TYPES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)


@dataclass
class _ParamInfo:
    """One distinct parameter with every name it is reachable under and its decay verdict."""

    param: nn.Parameter
    names: list[str] = field(default_factory=list)
    decay: bool = True


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def _name_is_decayed(
    module: nn.Module,
    local_name: str,
    full_name: str,
    param: nn.Parameter,
    no_decay: Sequence[str],
    declared: Sequence[str],
) -> bool:
    if _is_norm(module) or isinstance(module, _EMBEDDING_TYPES):
        return False
    if any(fnmatchcase(full_name, pattern) for pattern in declared):
        return False
    if param.ndim < 2 or local_name.endswith("bias"):
        return False
    if isinstance(module, _LINEAR_OR_CONV_TYPES):
        return True
    return not any(fnmatchcase(full_name, pattern) for pattern in no_decay)


def _declared_no_decay(model: nn.Module) -> list[str]:
    """The patterns of ``model.no_weight_decay()`` (rule 5), or none."""
    declare = getattr(model, "no_weight_decay", None)
    if declare is None:
        return []
    patterns = declare()
    if isinstance(patterns, str) or not all(isinstance(pattern, str) for pattern in patterns):
        raise ValueError(
            f"{type(model).__name__}.no_weight_decay() must return a collection of name patterns, got {patterns!r}"
        )
    return sorted(patterns)


def _collect_params(model: nn.Module, no_decay: Sequence[str], declared: Sequence[str]) -> list[_ParamInfo]:
    """Every distinct parameter of ``model`` in registration order, with all its names."""
    by_id: dict[int, _ParamInfo] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local_name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            full_name = f"{module_name}.{local_name}" if module_name else local_name
            full_name = full_name.replace(_CHECKPOINT_PREFIX, "")  # activation checkpointing wrappers are not named
            info = by_id.setdefault(id(param), _ParamInfo(param))
            if full_name in info.names:
                continue
            info.names.append(full_name)
            info.decay = info.decay and _name_is_decayed(module, local_name, full_name, param, no_decay, declared)
    return list(by_id.values())


def _matches(info: _ParamInfo, pattern: str) -> bool:
    return any(fnmatchcase(name, pattern) for name in info.names)


def _check_patterns_match(kind: str, patterns: Sequence[str], params: list[_ParamInfo]) -> None:
    for pattern in patterns:
        if not any(_matches(info, pattern) for info in params):
            raise ValueError(
                f"{kind} pattern {pattern!r} matches no parameter of the model "
                f"(patterns are fnmatch over full names, e.g. {params[0].names[0]!r})"
            )


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter one of whose names matches a pattern; return their names.

    Call it on the bare model before wrapping it for data parallelism. Every pattern must match some parameter
    (typo protection) and some parameter must stay trainable.
    """
    if not patterns:
        return []
    params = _collect_params(model, (), ())
    if not params:
        raise ValueError(f"model {type(model).__name__} has no parameters to freeze")
    _check_patterns_match("freeze", list(patterns), params)
    frozen = [info for info in params if any(_matches(info, pattern) for pattern in patterns)]
    if len(frozen) == len(params):
        raise ValueError(f"freeze patterns {list(patterns)} leave no trainable parameter in {type(model).__name__}")
    for info in frozen:
        info.param.requires_grad_(False)
    return [info.names[0] for info in frozen]


def _layer_ids(
    model: nn.Module, params: list[_ParamInfo], blocks: str, embeddings: Sequence[str]
) -> tuple[list[int], int]:
    """Each parameter's layer id by the layer-decay rule (module docstring), and the number of blocks."""
    try:
        block_list = model.get_submodule(blocks)
    except AttributeError:
        raise ValueError(f"layer_blocks {blocks!r} is not a module of {type(model).__name__}") from None
    if not isinstance(block_list, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"layer_blocks {blocks!r} is a {type(block_list).__name__}, not a ModuleList or Sequential")
    num_layers = len(block_list)
    prefix = f"{blocks}."

    def layer_of(name: str) -> int:
        if name.startswith(prefix):
            return int(name[len(prefix) :].split(".", 1)[0]) + 1
        if any(fnmatchcase(name, pattern) for pattern in embeddings):
            return 0
        return num_layers + 1

    return [min(layer_of(name) for name in info.names) for info in params], num_layers


def _lr_scale_of(info: _ParamInfo, lr_scales: Mapping[str, float]) -> float:
    for pattern, scale in lr_scales.items():
        if _matches(info, pattern):
            return float(scale)
    return 1.0


def _fused_by_default(params: list[nn.Parameter]) -> bool:
    """Fused AdamW when every parameter is a floating tensor on one device type with fused kernels (the CPU
    included: there the fused step is ~4-5x faster than the foreach one, benchmarks/reference_step.py)."""
    device_types = {param.device.type for param in params}
    if len(device_types) != 1:
        return False
    (device_type,) = device_types
    return device_type in _get_fused_kernels_supported_devices() and all(
        torch.is_floating_point(param) for param in params
    )


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: Sequence[float] = (0.9, 0.95),
    eps: float = 1e-8,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS,
    lr_scales: Mapping[str, float] | None = None,
    fused: bool | None = None,
    foreach: bool | None = None,
    layer_decay: float | None = None,
    layer_blocks: str | None = None,
    layer_embeddings: Sequence[str] = (),
) -> torch.optim.AdamW:
    """Build AdamW over ``model``'s trainable parameters, grouped by (decayed, lr scale, layer).

    Parameters that do not require grad are left out. Every ``lr_scales`` and ``layer_embeddings`` pattern must
    match some parameter (typo protection). ``layer_decay`` in (0, 1] turns on layer-wise lr decay over the blocks
    of ``layer_blocks`` (module docstring). ``fused=None`` picks fused kernels when all parameters sit on one
    device type that has them (CPU, CUDA, ...).
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot be used together; set at most one")
    lr_scales = dict(lr_scales or {})
    for pattern, scale in lr_scales.items():
        if scale <= 0:
            raise ValueError(f"lr_scales[{pattern!r}] must be > 0, got {scale}")
    if layer_decay is None and (layer_blocks is not None or layer_embeddings):
        raise ValueError("layer_blocks / layer_embeddings are set but layer_decay is not")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if layer_decay is not None and not layer_blocks:
        raise ValueError("layer_decay needs layer_blocks, the module path of the block list (e.g. 'trunk.blocks')")

    declared = _declared_no_decay(model)
    all_params = _collect_params(model, list(no_decay), declared)
    if not all_params:
        raise ValueError(f"model {type(model).__name__} has no parameters to optimise")
    _check_patterns_match(f"{type(model).__name__}.no_weight_decay()", declared, all_params)
    _check_patterns_match("lr_scales", list(lr_scales), all_params)
    _check_patterns_match("layer_embeddings", list(layer_embeddings), all_params)
    trainable = [info for info in all_params if info.param.requires_grad]
    if not trainable:
        raise ValueError(f"no trainable parameters in {type(model).__name__}: every one has requires_grad=False")
    layers, num_layers = (
        _layer_ids(model, trainable, layer_blocks, layer_embeddings)
        if layer_decay is not None
        else ([None] * len(trainable), 0)
    )

    groups: dict[tuple[bool, float, int | None], dict] = {}
    for info, layer in zip(trainable, layers, strict=True):
        scale = _lr_scale_of(info, lr_scales)
        if layer is not None:
            scale *= layer_decay ** (num_layers + 1 - layer)
        group = groups.setdefault(
            (info.decay, scale, layer),
            {
                "params": [],
                "param_names": [],
                "weight_decay": weight_decay if info.decay else 0.0,
                "lr_scale": scale,
                "base_lr": lr,
                "lr": lr * scale,
                **({} if layer is None else {"layer": layer}),
            },
        )
        group["params"].append(info.param)
        group["param_names"].append(info.names[0])

    if fused is None and not foreach:
        fused = _fused_by_default([info.param for info in trainable])
    # fused=False would also switch torch's foreach default off; None keeps it.
    return torch.optim.AdamW(
        list(groups.values()),
        lr=lr,
        betas=(float(betas[0]), float(betas[1])),
        eps=eps,
        weight_decay=weight_decay,
        fused=True if fused else None,
        foreach=foreach,
    )


def param_groups_summary(optimizer: torch.optim.Optimizer) -> str:
    """One line per param group: weight decay, lr scale, layer (with layer decay), base lr, tensor and element
    counts, names."""
    lines = []
    for index, group in enumerate(optimizer.param_groups):
        numel = sum(param.numel() for param in group["params"])
        names = group.get("param_names", [])
        layer = f" layer={group['layer']}" if "layer" in group else ""
        lines.append(
            f"group {index}: weight_decay={group['weight_decay']:g} lr_scale={group.get('lr_scale', 1.0):g}{layer} "
            f"base_lr={group.get('base_lr', group['lr']):g} tensors={len(group['params'])} numel={numel} "
            f"names=[{', '.join(names)}]"
        )
    return "\n".join(lines)
