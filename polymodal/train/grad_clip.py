"""Clipping by the global gradient norm when the parameters live on several device meshes.

``torch.nn.utils.clip_grad_norm_`` stacks the per-parameter norms, which DTensors on different meshes refuse: under
expert parallelism the experts are sharded over ``(dp_shard_mod_ep·cp, ep)`` and everything else over
``dp_shard·cp``. Here each mesh's parameters get their norm reduced over their own mesh, the norms combine on every
rank into the one global norm, and every group is scaled by the same coefficient. With one mesh (or none) this is
``clip_grad_norm_`` exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Scale the gradients so that their global 2-norm is at most ``max_norm``; returns the norm before scaling
    (a plain tensor; ``math.inf`` disables the scaling)."""
    by_mesh: dict[object, list[nn.Parameter]] = defaultdict(list)
    for param in parameters:
        if param.grad is not None:
            by_mesh[param.grad.device_mesh if isinstance(param.grad, DTensor) else None].append(param)
    norms = []
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([param.grad for param in group])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if not norms:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm != math.inf:
        for group in by_mesh.values():
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
