"""What ``polymodal plan`` asks of a data class: a batch of the largest shape its training loader yields, made from
the data config alone.

A data class offers it as a classmethod ``largest_batch(device=..., **config) -> LargestBatch``. It takes the same
arguments as the class (the planner calls it on the ``data:`` config node, ``_target_`` redirected to the method);
the ones that cannot change a shape (sources, tokenizer files, loader settings) are accepted and ignored, and no
file is read, so a config plans on a machine without its data set. Integer tensors (token ids, selection masks)
hold values the model may depend on: shapes in the model can follow them (4M keeps the selected tokens). Float
tensors may hold anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LargestBatch:
    """The batch and, for people, what its shape is (``"16 x 128 tokens"``)."""

    batch: dict[str, Any]
    description: str
