"""``polymodal plan``: the per-GPU memory and per-step communication of a config on a device mesh, with no GPU.

The model is built on the meta device, so parameter counts are exact and cost no memory; the training state
(parameters, gradients, AdamW state, DDP buckets, FSDP's gathered parameters) follows from the parameter shapes and
the optimizer's parameter groups (``states``). Activations are found in one of two ways (``docs/planning.md``):

* a transformer LM (Attention + SwiGLU + RMSNorm blocks, one LM head) is modelled analytically: an explicit list of
  the tensors its block saves for backward (``block_saved_tensors``), checked against autograd's saved-tensor hooks
  by ``tests/train/test_planner.py``, with formulas for tensor and context parallelism;
* any other model is measured: one micro-step of its data's largest batch runs on fake tensors (meta tensors that
  report a device), and the storages autograd saves and the bytes alive at the step's peak are counted
  (``fake_run``); ``tests/train/test_planner_measured.py`` checks them against real CPU runs.

Conventions: bytes are per GPU; collective bytes are what one GPU *sends* with ring algorithms (all-gather and
reduce-scatter of a full buffer of ``N`` bytes over ``n`` ranks: ``(n-1)/n·N``; all-reduce: ``2·(n-1)/n·N``).

Modules: ``shapes`` (parameter and block shapes of a meta-device model; the run's layout and precision),
``states`` (training state lines), ``memory`` (a transformer LM's saved tensors and memory lines),
``communication`` (collectives per step), ``experts`` (MoE layers: dropless capacity, active parameters, expert
parallelism), ``measured`` (the plan of any other model) on ``fake_run`` (the micro-step on fake tensors),
``known_values`` (values of integer tensors and scalars on fake tensors), ``saved_storages`` and ``live_bytes``
(counting storages), ``report`` (config reading, ``PlanReport``, ``format_plan``,
``plan_main``).
"""

from polymodal.train.parallel.planner.communication import (
    Collective,
    collectives,
    data_parallel_collectives,
    expert_parallel_collectives,
)
from polymodal.train.parallel.planner.experts import DROPLESS_CAPACITIES, MoELayer, MoELayers, active_params
from polymodal.train.parallel.planner.fake_run import StepMemory, measure_step
from polymodal.train.parallel.planner.measured import MeasuredModel, measure_model, measured_memory_lines
from polymodal.train.parallel.planner.memory import (
    SavedTensor,
    batch_bytes,
    block_input_bytes,
    block_saved_tensors,
    memory_lines,
    outside_saved_tensors,
)
from polymodal.train.parallel.planner.report import (
    ANALYTIC,
    DEFAULT_GPUS,
    GIB,
    MEASURED,
    PlanReport,
    format_plan,
    plan_main,
    plan_report,
)
from polymodal.train.parallel.planner.saved_storages import SavedStorages, SavedTensors
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
    "ANALYTIC",
    "DROPLESS_CAPACITIES",
    "DEFAULT_GPUS",
    "FP32",
    "GIB",
    "INT64",
    "MEASURED",
    "BlockShape",
    "Collective",
    "Layout",
    "MeasuredModel",
    "MemoryLine",
    "MoELayer",
    "MoELayers",
    "ModelShape",
    "ParamShape",
    "PlanReport",
    "Precision",
    "SavedStorages",
    "SavedTensor",
    "SavedTensors",
    "StepMemory",
    "TokenLayout",
    "Wrapper",
    "active_params",
    "batch_bytes",
    "block_input_bytes",
    "block_saved_tensors",
    "collectives",
    "data_parallel_collectives",
    "expert_parallel_collectives",
    "format_plan",
    "fsdp_shard_numel",
    "measure_model",
    "measure_step",
    "measured_memory_lines",
    "memory_lines",
    "model_shape",
    "outside_saved_tensors",
    "param_shapes",
    "plan_main",
    "plan_report",
    "state_lines",
    "tp_local_shape",
]
