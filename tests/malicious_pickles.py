"""A pickle that leaves a marker file when something unpickles it: proof that loading a checkpoint did not."""

import io
import os
import pickle
from pathlib import Path

import torch


class CreatesMarker:
    """Unpickling this creates the file named by ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mknod, (self.marker,))


def plant_malicious_metadata(checkpoint: Path, marker: Path) -> None:
    """Replace DCP's pickled ``.metadata`` of ``checkpoint`` with one that creates ``marker`` when unpickled."""
    (checkpoint / ".metadata").write_bytes(pickle.dumps(CreatesMarker(str(marker))))


def torch_saved_marker(marker: Path) -> bytes:
    """``torch.save`` of an object that creates ``marker`` when ``torch.load(weights_only=False)`` reads it."""
    buffer = io.BytesIO()
    torch.save(CreatesMarker(str(marker)), buffer)
    return buffer.getvalue()
