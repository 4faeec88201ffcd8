"""``polymodal plan``: the per-GPU memory and per-step communication of a config on a device mesh, with no GPU.

The model is built on the meta device, so parameter counts are exact and cost no memory. Activation bytes come
from an explicit list of the tensors our transformer block saves for backward (``block_saved_tensors``), which
``tests/train/test_planner.py`` checks against autograd's saved-tensor hooks. ``docs/planning.md`` derives every
formula and compares predictions with measurements.

Conventions: bytes are per GPU; collective bytes are what one GPU *sends* with ring algorithms (all-gather and
reduce-scatter of a full buffer of ``N`` bytes over ``n`` ranks: ``(n-1)/n·N``; all-reduce: ``2·(n-1)/n·N``).

Modules: ``shapes`` (model, parameter and block shapes of a meta-device model; the run's layout and precision),
``states`` (parameters, gradients, AdamW state, DDP buckets, FSDP's gathered parameters), ``memory`` (tensors saved
for backward and the memory lines), ``communication`` (collectives per step), ``report``
(config reading, ``PlanReport``, ``format_plan``, ``plan_main``).
"""

from polymodal.train.parallel.planner.communication import Collective, collectives, data_parallel_collectives
from polymodal.train.parallel.planner.memory import (
    SavedTensor,
    batch_bytes,
    block_input_bytes,
    block_saved_tensors,
    memory_lines,
    outside_saved_tensors,
)
from polymodal.train.parallel.planner.report import (
    DEFAULT_GPUS,
    GIB,
    PlanReport,
    format_plan,
    plan_main,
    plan_report,
)
from polymodal.train.parallel.planner.shapes import (
    FP32,
    INT64,
    BlockShape,
    Layout,
    ModelShape,
    ParamShape,
    Precision,
    TokenLayout,
    Wrapper,
    fsdp_shard_numel,
    model_shape,
    param_shapes,
    tp_local_shape,
)
from polymodal.train.parallel.planner.states import MemoryLine, state_lines

__all__ = [
    "DEFAULT_GPUS",
    "FP32",
    "GIB",
    "INT64",
    "BlockShape",
    "Collective",
    "Layout",
    "MemoryLine",
    "ModelShape",
    "ParamShape",
    "PlanReport",
    "Precision",
    "SavedTensor",
    "TokenLayout",
    "Wrapper",
    "batch_bytes",
    "block_input_bytes",
    "block_saved_tensors",
    "collectives",
    "data_parallel_collectives",
    "format_plan",
    "fsdp_shard_numel",
    "memory_lines",
    "model_shape",
    "outside_saved_tensors",
    "param_shapes",
    "plan_main",
    "plan_report",
    "state_lines",
    "tp_local_shape",
]
