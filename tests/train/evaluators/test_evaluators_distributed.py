"""Under FSDP on two gloo processes every evaluator gives the single process's numbers on data whose sizes do not
divide by the world size: each rank extracts its share, all ranks end with every item once, in order."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_clip import evaluators_of, tiny_clip
from torch.distributed.fsdp import FSDPModule

from polymodal.config.schema import DistributedConfig, ExperimentConfig
from polymodal.train.evaluators import EvalContext, run_evaluators
from polymodal.train.parallel.mesh import Mesh, ParallelDims
from polymodal.train.parallel.parallelize import parallelize

CPU = torch.device("cpu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fsdp_worker(rank: int, world: int, port: int, data: dict, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        exp = ExperimentConfig(distributed=DistributedConfig(strategy="fsdp"))
        mesh = Mesh.build(ParallelDims.from_config(exp.distributed, world), "cpu")
        model, _ = parallelize(tiny_clip(), mesh, exp, CPU)
        assert isinstance(model, FSDPModule)
        context = EvalContext(model, CPU, mesh.dp_rank, mesh.dims.dp, mesh.group("dp"))
        gathered = context.map_items(5, 2, lambda indices: {"index": torch.tensor(indices)})["index"]
        results[rank] = {"metrics": run_evaluators(evaluators_of(data), context), "gathered": gathered.tolist()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_evaluators_match_one_process(eval_data, single_thread):
    expected = run_evaluators(evaluators_of(eval_data), EvalContext(tiny_clip(), CPU))
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(fsdp_worker, args=(2, free_port(), dict(eval_data), results), nprocs=2, join=True)
        results = dict(results)
    for rank in range(2):
        assert results[rank]["gathered"] == [0, 1, 2, 3, 4]  # 3 + 3 padded shares, cut back to each item once
        assert results[rank]["metrics"] == pytest.approx(expected, abs=1e-5)
