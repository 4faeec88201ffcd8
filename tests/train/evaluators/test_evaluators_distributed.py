"""Under FSDP on two gloo processes every evaluator gives the single process's numbers on data whose sizes do not
divide by the world size: each rank extracts its share, all ranks end with every item once, in order."""

import pytest
import torch
from parallel_runs import spawn_gloo
from tiny_clip import evaluators_of, tiny_clip
from torch.distributed.fsdp import FSDPModule

from polymodal.config.schema import DistributedConfig, ExperimentConfig
from polymodal.train.evaluators import EvalContext, run_evaluators
from polymodal.train.parallel.mesh import Mesh, ParallelDims
from polymodal.train.parallel.parallelize import parallelize

CPU = torch.device("cpu")


def fsdp_worker(_rank: int, world: int, data: dict) -> dict:
    exp = ExperimentConfig(distributed=DistributedConfig(strategy="fsdp"))
    mesh = Mesh.build(ParallelDims.from_config(exp.distributed, world), "cpu")
    model, _ = parallelize(tiny_clip(), mesh, exp, CPU)
    assert isinstance(model, FSDPModule)
    context = EvalContext(model, CPU, mesh.dp_rank, mesh.dims.dp, mesh.group("dp"))
    gathered = context.map_items(5, 2, lambda indices: {"index": torch.tensor(indices)})["index"]
    return {"metrics": run_evaluators(evaluators_of(data), context), "gathered": gathered.tolist()}


@pytest.mark.slow
def test_fsdp_evaluators_match_one_process(eval_data, single_thread):
    expected = run_evaluators(evaluators_of(eval_data), EvalContext(tiny_clip(), CPU))
    results = spawn_gloo(fsdp_worker, 2, dict(eval_data))
    for rank in range(2):
        assert results[rank]["gathered"] == [0, 1, 2, 3, 4]  # 3 + 3 padded shares, cut back to each item once
        assert results[rank]["metrics"] == pytest.approx(expected, abs=1e-5)
