"""One training micro-step (forward, loss, backward) as the trainer runs it, on fake tensors.

The model, built on the meta device, is materialised as FakeTensors: meta tensors (no memory, no compute) that
report a device, here the CPU, so that bf16 autocast and the autograd engine run as on a real device (the engine
cannot run a fake CUDA device's backward without a GPU). Autocast therefore follows the CPU's rules. CUDA's also
run ``layer_norm``, ``group_norm``, ``softmax``, ``sum`` and a few more in fp32 whatever their inputs; polymodal's
norms and losses compute in fp32 themselves, so for them both save the same, but a module that normalises bf16
activations with ``nn.GroupNorm`` (the image tokenizers) saves bf16 where a GPU saves fp32.

What the meta device cannot do is stood in for:

* values: :class:`~polymodal.train.parallel.planner.known_values.KnownValues` keeps the values of integer
  tensors, so shapes that follow the batch's masks resolve, and of the scalars computed from known values (the
  loss's weighting, the gradients backward starts from);
* attention: SDPA runs the flash-attention kernel of torch's CPU build whatever the backend would choose. It saves
  what a GPU's flash and memory-efficient kernels save: queries, keys, values, output, an fp32 log-sum-exp per
  query and head, and a boolean mask as an additive bias in the query dtype, never the ``T×T`` probabilities
  (SDPA's math fallback on the meta device would save them). CUDA's memory-efficient kernel pads: its log-sum-exp
  has a multiple of 32 rows and its bias a multiple of 16 columns, and it saves two int64 random-state scalars;
* the trainer's wrappers: FSDP2 mixed precision casts the parameters to bf16 and the floating-point inputs of every
  unit and of the root to bf16 (``MixedPrecisionPolicy(cast_forward_inputs=True)``, its default).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map_only

from polymodal.models.meta import call_block
from polymodal.train.parallel.planner.known_values import KnownValues
from polymodal.train.parallel.planner.live_bytes import LiveBytes
from polymodal.train.parallel.planner.saved_storages import SavedStorages, SavedTensors

DEVICE = "cpu"


@dataclass(frozen=True)
class StepMemory:
    """What one micro-step holds beyond parameters, gradients and optimizer state: what autograd saves, and the
    ``temporaries`` on top of it at the step's peak (the model's outputs, gradients in flight; measured without
    activation checkpointing)."""

    saved: SavedTensors
    temporaries: int


class FlashAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` through the flash kernel whatever the backend would choose (module
    docstring); its inputs cast as autocast casts them, a boolean mask turned into a bias as SDPA turns it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        return _flash_attention(*args, **kwargs)


def _flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,  # the kernel takes fewer key/value heads as they are
) -> torch.Tensor:
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        attn_mask = attn_mask.to(query.dtype)
    output, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
    )
    return output


def materialise(model: nn.Module, device: str) -> None:
    """Replace the meta-device parameters and buffers of ``model`` by uninitialised tensors on ``device`` (fake
    ones inside a ``FakeTensorMode``), keeping tied parameters tied (``to_empty`` would not: it cannot set a fake
    tensor into a meta parameter and makes one new parameter per module)."""
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (meta tensor kept alive, its replacement)

    def empty(tensor: torch.Tensor) -> torch.Tensor:
        new = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=device)
        return nn.Parameter(new, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else new

    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for name, tensor in tensors.items():
                if tensor is not None:
                    tensors[name] = made.setdefault(id(tensor), (tensor, empty(tensor)))[1]


def _cast_floating_inputs(dtype: torch.dtype) -> Callable[..., tuple[tuple, dict]]:
    """A forward pre-hook casting floating-point tensors in the arguments to ``dtype``, as FSDP2's
    ``cast_forward_inputs`` does on every module it wraps."""

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != dtype else tensor

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return tree_map_only(torch.Tensor, cast, (args, kwargs))

    return hook


def fsdp_mixed_precision(model: nn.Module, units: list[nn.Module], dtype: torch.dtype) -> None:
    """The model as FSDP2 with ``MixedPrecisionPolicy(param_dtype=dtype)`` runs its forward: parameters (not
    buffers) in ``dtype``, the floating-point inputs of every unit and of the root cast to it."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
    for module in [*units, model]:
        module.register_forward_pre_hook(_cast_floating_inputs(dtype), with_kwargs=True)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the only real computation is on integer tensors and scalars (``KnownValues``), which a
    thread pool on a shared CPU slows down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def measure_step(
    model: nn.Module,
    units: list[nn.Module],
    objective: Callable[[], nn.Module],
    batch: Callable[[str], Any],
    param_dtype: torch.dtype | None,
    autocast: bool,
) -> StepMemory:
    """Materialise the meta-device ``model`` as fake tensors and run one micro-step of ``batch(device)`` with the
    loss of ``objective()`` as the trainer does (train mode; bf16 autocast when ``autocast``; FSDP2 mixed precision
    when ``param_dtype``), recording what autograd saves and the bytes alive at the step's peak.

    The batch and the objective are made inside the fake run, so their tensors are fake too. ``model`` keeps its
    fake parameters afterwards (the caller is done with its shapes)."""
    with FakeTensorMode(), _one_thread():
        materialise(model, DEVICE)
        if param_dtype is not None:
            fsdp_mixed_precision(model, units, param_dtype)
        with KnownValues(), FlashAttention():
            inputs, loss_block = batch(DEVICE), objective()
            model.train()
            recorder = SavedStorages(units)
            with LiveBytes() as live:
                for param in model.parameters():
                    if param.requires_grad:
                        param.register_post_accumulate_grad_hook(lambda param: live.gradient(param.grad))
                with recorder.recording(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
                    output = call_block(model, dict(inputs), name="model")
                    loss, metrics = call_block(loss_block, output, name="loss")
                saved = recorder.result(model, inputs)
                loss.backward()  # the trainer holds the output dict and the metrics until the step ends
                del output, metrics
    return StepMemory(saved, temporaries=live.peak - saved.outside - saved.in_units)
