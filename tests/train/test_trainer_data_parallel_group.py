"""The trainer publishes its mesh's data-parallel group, not WORLD: under tensor parallelism (2 gloo processes,
tp 2, so dp 1) the two ranks are TP peers holding the same batch, and the CLIP loss must not gather the peer's copy."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from parallel_runs import spawn_gloo

from polymodal.config import load_config
from polymodal.distributed.collectives import all_gather_with_grad
from polymodal.distributed.groups import data_parallel_group, set_data_parallel_group
from polymodal.objectives.contrastive import CLIPContrastiveLoss
from polymodal.train.trainer import Trainer

WORLD = 2


def features() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    text = F.normalize(image + torch.randn(3, 8, generator=generator), dim=-1)
    return {"image_embeds": image, "text_embeds": text, "logit_scale": torch.tensor(10.0)}


def worker(rank: int, world: int, config, out) -> dict:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # as torchrun sets them
    trainer = Trainer(load_config(config, [f"experiment.distributed.tp={WORLD}", f"experiment.output_dir={out}"]))
    loss, _ = CLIPContrastiveLoss()(features())
    result = {"dp_ranks": dist.get_process_group_ranks(data_parallel_group()), "dp_rank": trainer.mesh.dp_rank}
    set_data_parallel_group(dist.group.WORLD)  # what a loss gathering over WORLD would compute
    result |= {"loss": loss, "world_loss": CLIPContrastiveLoss()(features())[0]}
    assert all_gather_with_grad(features()["image_embeds"]).shape[0] == 6  # WORLD does gather the peer's copy
    return result


@pytest.mark.slow
def test_trainer_publishes_the_data_parallel_group_of_its_mesh(tmp_path, text_corpus, tiny_config_writer, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny_config_writer(tmp_path, text_corpus)
    results = spawn_gloo(worker, WORLD, config, tmp_path / "run")
    assert [results[rank]["dp_ranks"] for rank in range(WORLD)] == [[0], [1]]  # each rank its own data slice
    assert [results[rank]["dp_rank"] for rank in range(WORLD)] == [0, 0]  # the TP peers read the same batch
    one_process, _ = CLIPContrastiveLoss()(features())
    for rank in range(WORLD):
        torch.testing.assert_close(results[rank]["loss"], one_process, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(results[rank]["world_loss"], one_process)  # duplicates would have been negatives
