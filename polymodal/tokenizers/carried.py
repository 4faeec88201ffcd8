"""Tokenizers that travel with what they encoded: a run directory, an export, a pre-tokenized shard tree.

A trained model is only usable with the tokenizers its data was encoded with, so they are copied along:

* the trainer copies the tokenizers of its data (the data module's ``tokenizer_paths()``) into
  ``<run>/tokenizers/`` when a run starts, and ``polymodal export`` copies that folder into the export;
* ``pretokenize-4m`` records each image tokenizer beside the codes it wrote (``<root>/tok_<m>/tokenizer/``).

In a ``tokenizers/`` folder a text tokenizer is one JSON file (``<name>.json``) and an image tokenizer an export
directory (``<name>/`` with ``config.yaml`` and ``model.safetensors``). Names are the data's: ``text`` for the text
tokenizer, the modality (``tok_rgb@64``) for an image tokenizer.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from polymodal.files import atomic_output, usual_permissions

TOKENIZERS_DIR = "tokenizers"
TEXT = "text"
RECORDED_TOKENIZER = "tokenizer"  # <root>/tok_<m>/tokenizer/: the image tokenizer that wrote the codes beside it


def copy_tokenizers(sources: Mapping[str, str | Path], destination: str | Path) -> dict[str, Path]:
    """Copy each named tokenizer (a JSON file or an export directory) into ``destination``; each copy replaces
    an older one of the same name whole, so a reader never sees half a tokenizer. Returns the copies by name."""
    if not sources:
        return {}
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    copies = {}
    for name, source in sources.items():
        source = Path(source)
        if source.is_file():
            copies[name] = _copy_file(source, destination / f"{name}{source.suffix}")
        elif source.is_dir():
            copies[name] = _copy_directory(source, destination / name)
        else:
            raise FileNotFoundError(f"tokenizer {name!r}: {source} does not exist")
    return copies


def _copy_file(source: Path, target: Path) -> Path:
    with atomic_output(target) as staged:
        shutil.copyfile(source, staged)
    usual_permissions(target)
    return target


def _copy_directory(source: Path, target: Path) -> Path:
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    shutil.copytree(source, staged, dirs_exist_ok=True)
    for file in staged.rglob("*"):
        usual_permissions(file)
    staged.chmod(0o755)
    if target.exists():
        shutil.rmtree(target)
    staged.rename(target)
    return target


def tokenizers_folder(path: str | Path) -> Path:
    """Where the tokenizers of a run, checkpoint or export directory are (the folder may not exist)."""
    path = Path(path)
    if path.parent.name == "checkpoints":  # <run>/checkpoints/step_N: the run's folder
        return path.parent.parent / TOKENIZERS_DIR
    return path / TOKENIZERS_DIR


def carried_tokenizer_paths(path: str | Path) -> dict[str, Path]:
    """The tokenizers a run, checkpoint or export directory carries, by name (empty when it carries none)."""
    folder = tokenizers_folder(path)
    if not folder.is_dir():
        return {}
    found = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):  # a copy in progress
            continue
        if entry.is_file() and entry.suffix == ".json":
            found[entry.stem] = entry
        elif entry.is_dir():
            found[entry.name] = entry
    return found


def load_carried_tokenizers(path: str | Path) -> dict[str, Any]:
    """The tokenizers ``path`` carries, loaded: ``tokenizers.Tokenizer`` for JSON files, an
    :class:`~polymodal.tokenizers.image.tokenizer.ImageTokenizer` (eval mode) for export directories."""
    from tokenizers import Tokenizer

    from polymodal.tokenizers.loading import load_image_tokenizer

    return {
        name: Tokenizer.from_file(str(source)) if source.is_file() else load_image_tokenizer(source)
        for name, source in carried_tokenizer_paths(path).items()
    }


def recorded_tokenizer(shard: str) -> Path | None:
    """The image tokenizer recorded beside a local shard of codes (``<root>/tok_<m>/tokenizer/``), if any."""
    if "://" in shard:
        return None
    folder = Path(shard).parent / RECORDED_TOKENIZER
    return folder if (folder / "config.yaml").is_file() else None


def export_fingerprint(export: Path) -> str:
    """SHA-256 over an export's tensors (names, dtypes, shapes, values): two exports of the same weights share it
    whatever the byte layout of their files."""
    from polymodal.checkpoint.weights import read_weights

    digest = hashlib.sha256()
    for name, tensor in sorted(read_weights(export).items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_recorded_tokenizer(source: str | Path, codes_folder: str | Path) -> None:
    """Refuse to add codes of the image tokenizer at ``source`` to ``codes_folder`` when another tokenizer is
    recorded there: the codes already in it were written by that one."""
    from polymodal.checkpoint.weights import load_trained_model

    if (Path(codes_folder) / RECORDED_TOKENIZER / "config.yaml").is_file():
        _refuse_another(load_trained_model(source)[0], source, codes_folder)


def _refuse_another(model: torch.nn.Module, source: str | Path, codes_folder: str | Path) -> None:
    from polymodal.checkpoint.weights import read_weights

    recorded = Path(codes_folder) / RECORDED_TOKENIZER
    if not (recorded / "config.yaml").is_file():
        return
    own = model.state_dict()
    weights = read_weights(recorded)
    if weights.keys() - own.keys() or any(not torch.equal(value, own[key]) for key, value in weights.items()):
        raise ValueError(
            f"{codes_folder} holds codes of another tokenizer than {source} (the one recorded in {recorded}); "
            f"delete {codes_folder} to encode again with the new one"
        )


def record_image_tokenizer(source: str | Path, codes_folder: str | Path) -> Path:
    """Write the image tokenizer at ``source`` (a run, checkpoint or export directory) as an export into
    ``codes_folder/tokenizer``, refusing (as :func:`check_recorded_tokenizer`) if another one is recorded there."""
    from polymodal.checkpoint.weights import export_weights, load_trained_model

    codes_folder = Path(codes_folder)
    model, config_yaml = load_trained_model(source)
    _refuse_another(model, source, codes_folder)
    with tempfile.TemporaryDirectory(dir=codes_folder, prefix=f".{RECORDED_TOKENIZER}.") as staged:
        export_weights(model, Path(staged), config_yaml)
        return _copy_directory(Path(staged), codes_folder / RECORDED_TOKENIZER)
