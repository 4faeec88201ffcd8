"""The data-parallel process group of the run, published once by whoever builds the mesh (the trainer).

Objectives and evaluators that gather across the batch (contrastive losses, retrieval metrics) take it from here,
never from WORLD: under tensor or context parallelism the world holds several copies of each batch slice.
"""

from __future__ import annotations

import torch.distributed as dist

_data_parallel_group: dist.ProcessGroup | None = None


def set_data_parallel_group(group: dist.ProcessGroup | None) -> None:
    """Publish the data-parallel group (``None``: a single process, nothing to gather)."""
    global _data_parallel_group
    _data_parallel_group = group


def data_parallel_group() -> dist.ProcessGroup | None:
    """The published data-parallel group; ``None`` in a single process.

    A run of several processes that published none is a RuntimeError rather than a silent guess (a gather over
    WORLD is wrong under tensor/context parallelism; no gather silently shrinks the batch). To gather nothing on
    purpose, publish a group of one rank.
    """
    if _data_parallel_group is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            "this process runs in a process group of several ranks but no data-parallel group was published: "
            "call polymodal.distributed.groups.set_data_parallel_group(group) (the trainer does when building its mesh)"
        )
    return _data_parallel_group
