"""Two data-parallel ranks save the loader state; one process with twice the batch size resumes from it and gets the
two ranks' next batches, concatenated (2 real processes, gloo)."""

import numpy as np
from parallel_runs import spawn_gloo

from polymodal.distributed.env import gather_objects
from polymodal.families.lumina.data import LuminaData

BATCH, SEQ_LEN, VOCAB = 2, 64, 768


def worker(rank: int, world: int, config: str, taken: int) -> dict:
    data = LuminaData(config, SEQ_LEN, BATCH, VOCAB, seed=7, dp_rank=rank, dp_world=world)
    for _ in range(taken):
        next(data.train)
    states = gather_objects(data.train.state_dict())
    return {"states": states, "next": {name: value.tolist() for name, value in next(data.train).items()}}


def test_two_ranks_resume_on_one_process_with_twice_the_batch(record_set, data_config):
    lengths = np.random.default_rng(0).integers(5, 60, 80)
    record_set("a", lengths[:50])
    record_set("b", lengths[50:])
    config = str(data_config("META:\n  - path: a/record.json\n  - path: b/record.json\n    ratio: 0.5\n"))
    single = LuminaData(config, SEQ_LEN, 2 * BATCH, VOCAB, seed=7)
    taken = single.train.batches_per_epoch + 2  # the saved position is in the second epoch
    results = spawn_gloo(worker, 2, config, taken)
    states = results[0]["states"]
    assert states[0] == states[1] == results[1]["states"][0] and states[0]["epoch"] == 1
    single.train.load_state_dict(states[0])
    batch = next(single.train)
    for name, value in batch.items():
        assert value.tolist() == results[0]["next"][name] + results[1]["next"][name], name
