"""The device mesh ``dp_replicate × dp_shard × cp × tp`` and the process groups carved out of it.

Ranks are laid out with ``tp`` fastest (tensor-parallel peers are neighbours, i.e. on one node), then ``cp``,
then ``dp_shard``, then ``dp_replicate``. The data-parallel rank — which slice of the global batch a rank
reads — is ``replicate_rank · dp_shard + shard_rank``; TP and CP peers share it and so see the same batch.

Expert parallelism borrows its ranks from ``dp_shard`` (as torchtitan's does): the mesh splits ``dp_shard`` into
``dp_shard_mod_ep × ep``, ``ep`` the faster, so the ``ep`` ranks of a group read different slices of the batch and
exchange their tokens. Experts are sharded over ``ep`` and data-parallel over the rest (``dp_shard_mod_ep`` and
``cp``, replicated over ``dp_replicate``); every other parameter is data-parallel over all of ``dp_shard`` as without
experts. With ``ep = 1`` the two extra dims have sizes ``dp_shard`` and 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from polymodal.config.errors import ConfigError
from polymodal.config.schema import DistributedConfig

MESH_DIMS = ("dp_replicate", "dp_shard_mod_ep", "ep", "cp", "tp")


@dataclass(frozen=True)
class ParallelDims:
    strategy: str
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int
    ep: int = 1

    @classmethod
    def from_config(cls, cfg: DistributedConfig, world_size: int) -> ParallelDims:
        """Fill in ``dp_shard: -1`` and check the degrees multiply to ``world_size``."""
        where = "experiment.distributed"
        if cfg.strategy == "ddp" and (cfg.dp_replicate != 1 or cfg.dp_shard not in (-1, 1)):
            raise ConfigError(
                f"{where}: strategy ddp replicates over all data-parallel ranks; leave dp_replicate/dp_shard"
            )
        if cfg.strategy == "fsdp" and cfg.dp_replicate != 1:
            raise ConfigError(f"{where}: dp_replicate={cfg.dp_replicate} needs strategy hsdp (fsdp shards only)")
        model_parallel = cfg.tp * cfg.cp
        if world_size % model_parallel:
            raise ConfigError(f"{where}: tp·cp = {model_parallel} does not divide the world size {world_size}")
        data_parallel = world_size // model_parallel
        if cfg.strategy == "ddp":
            replicate, shard = data_parallel, 1
        else:
            if data_parallel % cfg.dp_replicate:
                raise ConfigError(
                    f"{where}: dp_replicate={cfg.dp_replicate} does not divide the {data_parallel} data-parallel ranks "
                    f"(world {world_size} / tp {cfg.tp} / cp {cfg.cp})"
                )
            replicate = cfg.dp_replicate
            shard = data_parallel // replicate if cfg.dp_shard == -1 else cfg.dp_shard
        dims = cls(cfg.strategy, replicate, shard, cfg.cp, cfg.tp, cfg.ep)
        if dims.world_size != world_size:
            raise ConfigError(
                f"{where}: dp_replicate·dp_shard·cp·tp = {replicate}·{shard}·{cfg.cp}·{cfg.tp} = {dims.world_size}, "
                f"but the world size is {world_size}"
            )
        if cfg.strategy == "hsdp" and replicate == 1:
            raise ConfigError(f"{where}: strategy hsdp needs dp_replicate > 1 (else use fsdp)")
        if cfg.loss_parallel and cfg.tp == 1:
            raise ConfigError(f"{where}: loss_parallel shards the logits over tensor-parallel ranks; it needs tp > 1")
        if cfg.strategy == "ddp" and cfg.tp > 1:
            raise ConfigError(f"{where}: tensor parallelism needs strategy fsdp or hsdp, not ddp")
        if cfg.ep > 1 and cfg.strategy == "ddp":
            raise ConfigError(
                f"{where}: expert parallelism needs strategy fsdp or hsdp (ddp would average the "
                "different experts of the ep ranks)"
            )
        if shard % cfg.ep:
            raise ConfigError(
                f"{where}: ep={cfg.ep} must divide dp_shard={shard} (expert parallelism borrows "
                "data-parallel shard ranks)"
            )
        return dims

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.dp_shard * self.cp * self.tp

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def dp_shard_mod_ep(self) -> int:
        return self.dp_shard // self.ep


@dataclass(frozen=True)
class Mesh:
    """The mesh of a distributed run and the views of it that the parallel plans use: the five named dims, and
    the flattened ``dp`` (the data slice), ``dp_shard`` (``dp_shard_mod_ep × ep``), ``dp_shard_cp`` (FSDP),
    ``dp_cp`` (DDP) and ``dp_shard_mod_ep_cp`` (FSDP of the experts), kept here because torch deprecates slicing a
    flattened dim from the root mesh."""

    dims: ParallelDims
    device_mesh: DeviceMesh
    flattened: dict[str, DeviceMesh]

    @classmethod
    def build(cls, dims: ParallelDims, device_type: str) -> Mesh:
        shape = (dims.dp_replicate, dims.dp_shard_mod_ep, dims.ep, dims.cp, dims.tp)
        mesh = init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIMS)
        flattened = {
            "dp": mesh["dp_replicate", "dp_shard_mod_ep", "ep"]._flatten("dp"),
            "dp_shard": mesh["dp_shard_mod_ep", "ep"]._flatten("dp_shard"),
            "dp_shard_cp": mesh["dp_shard_mod_ep", "ep", "cp"]._flatten("dp_shard_cp"),
            "dp_cp": mesh["dp_replicate", "dp_shard_mod_ep", "ep", "cp"]._flatten("dp_cp"),
            "dp_shard_mod_ep_cp": mesh["dp_shard_mod_ep", "cp"]._flatten("dp_shard_mod_ep_cp"),
        }
        return cls(dims, mesh, flattened)

    def __getitem__(self, name: str | tuple[str, ...]) -> DeviceMesh:
        if isinstance(name, str) and name in self.flattened:
            return self.flattened[name]
        with warnings.catch_warnings():  # HSDP's (dp_replicate, dp_shard_cp): no other way on every torch >= 2.6
            warnings.filterwarnings("ignore", message="Slicing a flattened dim from root mesh")
            return self.device_mesh[name]

    @property
    def dp_rank(self) -> int:
        return self["dp"].get_local_rank()

    @property
    def cp_rank(self) -> int:
        return self["cp"].get_local_rank()

    def group(self, name: str) -> dist.ProcessGroup:
        return self[name].get_group()
