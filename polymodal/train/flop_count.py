"""Training FLOPs of a step for models without an analytic count: ``torch.utils.flop_counter`` on a fake twin.

A model that implements ``train_flops(batch)`` (``models/protocol.py``) reports its own analytic count, which is
always preferred. Any other model (a ViT or AIM composed in YAML, the image tokenizers, ...) has one step's forward +
backward counted by :class:`~torch.utils.flop_counter.FlopCounterMode`, once per batch shape signature (the shapes
and dtypes of the batch's tensors; a new signature is counted once more).

How, and why not on the real step: the *twin* is the same model built again from the config (same architecture,
same frozen parameters) on the meta device, its parameters and buffers then made fake tensors on the real device
(:class:`~torch._subclasses.fake_tensor.FakeTensorMode`: shapes, dtypes and device, no storage). It runs on a clone
of the real batch, whose values are real, so checks and masks built from the data run as in the real step, while
everything that touches a weight is fake: it allocates nothing and runs no kernel. Its backward starts from the sum
of the model's differentiable outputs. Nothing the real step sees is touched — no parameter, gradient, optimizer
state, buffer (EMA codebooks, running statistics) or RNG stream (forked while counting) — whatever wraps the real
model (DDP, FSDP2, activation checkpointing, ``torch.compile``), and the count is the whole unsplit model on the
whole batch of a data-parallel rank, which is what the trainer divides by. Counting on the real step itself would see
activation-checkpoint recompute (HFU, not MFU), per-shard shapes under parallelism, and would put a dispatch mode
around compiled code; a count here costs a fraction of a second of Python, once per shape.

The twin runs in eval mode: training-only branches (dropout, drop-path, a VQ codebook's EMA update and dead-code
restarts, synchronised batch statistics) draw random numbers, update state, read values or talk to other ranks, and
multiply no weights; the matmuls are the same. The objective is not run (an elementwise loss multiplies no weights;
a contrastive loss's ``B x B`` logits are left out, as the analytic CLIP count leaves them out). A forward that reads
the values of a tensor computed from weights (``.item()``), or whose shapes follow such values (boolean indexing of
such a tensor) cannot run on fake tensors: such a model is reported once with the reason, and logs no MFU until it
implements ``train_flops``.

What is counted: matmuls, convolutions and attention (FlopCounterMode's registry, 2 FLOPs per multiply-accumulate);
norms, activations, softmax and other elementwise ops are not, nor are embedding lookups — the conventions of
:mod:`polymodal.models.flops`. torch 2.14 counts the CUDA attention kernels but not the CPU fused kernel of
``F.scaled_dot_product_attention`` nor in-place ``addmm_``; :func:`flop_counter` maps them (attention backward =
2x forward, the kernel's recompute not counted); causal and padding masks are not discounted. A custom backward
that recomputes is counted as it runs: the chunked LM head (``models/token_loss.py``) recomputes its logits, one
more ``2·D·V`` per labelled row than the analytic ``6·D·V``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from polymodal.models.meta import DataDict, call_block

log = logging.getLogger(__name__)

ShapeSignature = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]

_aten = torch.ops.aten


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """The backward's model FLOPs: grad of scores and of V, then of Q and K (4 matmuls, 2x the forward). The
    kernel's recompute of the scores is not counted (MFU, not HFU), as the math backend's backward has none."""
    return 2 * sdpa_flop_count(query, key, value)


def _inplace_addmm_flops(self: Any, a: Any, b: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``self += a @ b`` with ``a`` [..., m, k] and ``b`` [..., k, n] (``addmm_`` and ``baddbmm_``)."""
    return 2 * math.prod(a) * b[-1]


def _missing_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for ops this torch's FlopCounterMode does not count: the CPU fused attention kernel (torch 2.14
    counts the CUDA flash / efficient / cuDNN kernels but sees 0 FLOPs in ``F.scaled_dot_product_attention`` on
    CPU), and the in-place matmul-accumulates (``addmm_``: the chunked LM head's weight gradient)."""
    formulas = {
        "_scaled_dot_product_flash_attention_for_cpu": _cpu_sdpa_flops,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _cpu_sdpa_backward_flops,
        "addmm_": _inplace_addmm_flops,
        "baddbmm_": _inplace_addmm_flops,
    }
    packets = {name: getattr(_aten, name, None) for name in formulas}
    return {
        packet: formulas[name] for name, packet in packets.items() if packet is not None and packet not in flop_registry
    }


def flop_counter() -> FlopCounterMode:
    """A silent :class:`FlopCounterMode` that also counts CPU attention and in-place matmuls (``_missing_formulas``)."""
    return FlopCounterMode(display=False, custom_mapping=_missing_formulas())


def shape_signature(batch: DataDict, prefix: str = "") -> ShapeSignature:
    """The shapes and dtypes of every tensor in ``batch`` (nested dicts included), in key order."""
    signature: list[tuple[str, tuple[int, ...], torch.dtype]] = []
    for key in sorted(batch, key=str):
        value, path = batch[key], f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            signature.append((path, tuple(value.shape), value.dtype))
        elif isinstance(value, dict):
            signature.extend(shape_signature(value, f"{path}."))
    return tuple(signature)


def _copy_batch(batch: DataDict) -> DataDict:
    """A copy of the batch (nested dicts too) whose tensors are clones: the twin writes its outputs into its own
    dicts, and no in-place op of its forward can reach the real step's tensors."""
    return {
        key: value.clone()
        if isinstance(value, torch.Tensor)
        else _copy_batch(value)
        if isinstance(value, dict)
        else value
        for key, value in batch.items()
    }


def _differentiable_outputs(value: Any) -> list[torch.Tensor]:
    """Every tensor in ``value`` (dicts, lists and tuples, named ones too, walked) that carries a gradient: what the
    model computed from trainable weights."""
    if isinstance(value, torch.Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _differentiable_outputs(item)]
    return []


class StepFlopCounter:
    """Forward + backward FLOPs of one training step on a batch, counted on a fake-tensor twin of the model (module
    docstring) once per :func:`shape_signature` and cached.

    ``build_twin`` builds the model; it is called once, on first use, under ``torch.device("meta")`` with the RNG
    streams forked, and the parameters and buffers it made are then replaced by fake tensors on ``device``. The
    twin's forward runs under ``autocast()`` (the trainer's mixed precision). ``__call__`` returns the FLOPs, or
    ``None`` when the twin cannot run (warned once; later calls return ``None`` at once).
    """

    def __init__(
        self,
        build_twin: Callable[[], nn.Module],
        device: torch.device | str = "cpu",
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        model_name: str = "the model",
    ):
        self._build_twin = build_twin
        self._device = torch.device(device)
        self._autocast = autocast
        self._model_name = model_name
        self._mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._twin: nn.Module | None = None
        self._counts: dict[ShapeSignature, float] = {}
        self._failed = False

    @property
    def counted_signatures(self) -> int:
        """How many distinct batch shape signatures have been counted (each counted once)."""
        return len(self._counts)

    def __call__(self, batch: DataDict) -> float | None:
        if self._failed:
            return None
        signature = shape_signature(batch)
        if signature not in self._counts:
            try:
                self._counts[signature] = self._count(batch)
            except Exception as error:  # a forward the twin cannot run: report it, train on without MFU
                self._failed = True
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                log.warning(
                    "MFU not logged: %s has no train_flops(batch) and its FLOPs cannot be counted on fake tensors "
                    "(%s: %s). Implement train_flops (models/protocol.py) to log MFU.",
                    self._model_name,
                    type(error).__name__,
                    reason,
                )
                return None
        return self._counts[signature]

    def _count(self, batch: DataDict) -> float:
        devices = [self._device] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self._twin is None:
                self._twin = self._materialize_twin()
            return self._count_step(self._twin, batch)

    def _materialize_twin(self) -> nn.Module:
        """Built on the meta device (as ``experiment.distributed.meta_init`` builds models: no memory, no
        initialisation drawn), then given fake parameters and buffers on the device, in eval mode (module
        docstring)."""
        with torch.device("meta"):
            twin = self._build_twin()
        with self._mode:
            return twin.to_empty(device=self._device).eval()

    def _count_step(self, model: nn.Module, batch: DataDict) -> float:
        with flop_counter() as counter:
            with self._autocast():
                outputs = _differentiable_outputs(call_block(model, _copy_batch(batch), name="model"))
            if outputs:
                torch.stack([output.float().sum() for output in outputs]).sum().backward()
        model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())
