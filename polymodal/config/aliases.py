"""Where the modules of configs and exports written before the families layout (polymodal 0.1) live now.

A ``_target_`` such as ``polymodal.models.fourm.build_fourm`` in an old ``config.yaml`` is rewritten to its new
path (``polymodal.families.fourm.model.build_fourm``) with a one-line :class:`FutureWarning` per old path, so runs
and exports made before the move still load. Write new configs with the new paths.
"""

from __future__ import annotations

import warnings
from typing import Any

from omegaconf import DictConfig, ListConfig

MOVED_MODULES: dict[str, str] = {
    "polymodal.data.fourm": "polymodal.families.fourm",
    "polymodal.data.fourm.alphas": "polymodal.families.fourm.masking.alphas",
    "polymodal.data.fourm.budgets": "polymodal.families.fourm.masking.budgets",
    "polymodal.data.fourm.data": "polymodal.families.fourm.data",
    "polymodal.data.fourm.masking": "polymodal.families.fourm.masking.masker",
    "polymodal.data.fourm.modalities": "polymodal.families.fourm.modalities",
    "polymodal.data.fourm.samples": "polymodal.families.fourm.samples",
    "polymodal.data.fourm.span_masking": "polymodal.families.fourm.masking.spans",
    "polymodal.data.synth.cli": "polymodal.commands.synth",
    "polymodal.data.synth.colourmaps": "polymodal.colourmaps",
    "polymodal.data.text.atomic_files": "polymodal.files",
    "polymodal.generate": "polymodal.families.fourm.generate",
    "polymodal.generate.cli": "polymodal.families.fourm.generate.run",
    "polymodal.generate.evaluate": "polymodal.families.fourm.evaluate.tasks",
    "polymodal.generate.inputs": "polymodal.families.fourm.generate.inputs",
    "polymodal.generate.outputs": "polymodal.families.fourm.generate.outputs",
    "polymodal.generate.sampler": "polymodal.families.fourm.generate.sampler",
    "polymodal.generate.sampling": "polymodal.models.sampling",
    "polymodal.generate.schedules": "polymodal.families.fourm.generate.schedules",
    "polymodal.models.fourm": "polymodal.families.fourm.model",
    "polymodal.models.fourm.embeddings": "polymodal.families.fourm.model.embeddings",
    "polymodal.models.fourm.flops": "polymodal.families.fourm.model.flops",
    "polymodal.models.fourm.model": "polymodal.families.fourm.model.fourm",
    "polymodal.models.fourm.sizes": "polymodal.families.fourm.model.sizes",
    "polymodal.models.fourm.upstream": "polymodal.families.fourm.upstream",
    "polymodal.models.fourm.vit": "polymodal.families.fourm.model.vit",
    "polymodal.objectives.fourm": "polymodal.families.fourm.loss",
    "polymodal.pretokenize": "polymodal.families.fourm.pretokenize",
    "polymodal.pretokenize.fourm": "polymodal.families.fourm.pretokenize",
    "polymodal.tokenizers.bpe": "polymodal.tokenizers.text.bpe",
    "polymodal.tokenizers.evaluate": "polymodal.tokenizers.image.evaluate",
    "polymodal.tokenizers.image_tokenizer": "polymodal.tokenizers.image.tokenizer",
    "polymodal.tokenizers.quantizers": "polymodal.tokenizers.image.quantizers",
    "polymodal.tokenizers.wordpiece": "polymodal.tokenizers.text.wordpiece",
    "polymodal.train.checkpoint": "polymodal.checkpoint.dcp",
    "polymodal.train.distributed": "polymodal.distributed.env",
    "polymodal.train.flops": "polymodal.train.mfu",
    "polymodal.train.parallel.collectives": "polymodal.distributed.collectives",
    "polymodal.train.rng": "polymodal.checkpoint.rng",
    "polymodal.train.weights": "polymodal.checkpoint.weights",
}
_BY_LENGTH = sorted(MOVED_MODULES, key=len, reverse=True)
_warned: set[str] = set()


def current_target(target: str) -> str:
    """``target`` with a moved module prefix replaced by its new module (warned once per old prefix)."""
    for old in _BY_LENGTH:
        if target == old or target.startswith(old + "."):
            new = MOVED_MODULES[old]
            if old not in _warned:
                _warned.add(old)
                warnings.warn(f"'{old}' has moved to '{new}'; update the config", FutureWarning, stacklevel=2)
            return new + target[len(old) :]
    return target


def update_targets(node: Any) -> None:
    """Rewrite every moved ``_target_`` of a nested config (``DictConfig``/``ListConfig`` or plain dicts and
    lists) in place, without resolving its interpolations."""
    target = None
    if isinstance(node, DictConfig):
        children = [node._get_node(key) for key in node]
        target = node._get_node("_target_")._value() if "_target_" in node else None
    elif isinstance(node, dict):
        children, target = list(node.values()), node.get("_target_")
    elif isinstance(node, ListConfig):
        children = [node._get_node(index) for index in range(len(node))]
    elif isinstance(node, list):
        children = node
    else:
        return
    if isinstance(target, str):
        current = current_target(target)
        if current != target:
            node["_target_"] = current
    for child in children:
        update_targets(child)
