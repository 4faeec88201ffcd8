"""``polymodal pretokenize-4m``: pre-tokenized 4M shards, with the crop settings the codes were made from.

For a shard tree ``root/<modality>/shard-NNNNN.tar`` and one image tokenizer per image modality this writes

* ``out/tok_<modality>/shard-NNNNN.tar`` with ``<key>.tok_<modality>.npy``: codes ``(n_crops, h·w)``, int16
  (int32 when the codebook has more than 32768 entries);
* ``out/crop_settings/shard-NNNNN.tar`` with ``<key>.crop_settings.npy``: int64 ``(n_crops, 5)`` rows
  ``(top, left, height, width, flip)`` in source pixels.

* ``out/tok_<modality>/tokenizer/``: an export of the tokenizer that wrote the codes, so the codes carry their
  decoder (a 4M run trained on them copies it; encoding again with another tokenizer is refused).

Row 0 is the largest centre square crop, unflipped (what evaluation sees). The other rows are random resized
crops and flips drawn exactly like :class:`~polymodal.data.multimodal.transforms.AlignedAugment` draws them in
training, from a generator seeded by ``(seed, key)``: the rows of a sample never depend on the shard order,
the worker count or which shards were redone. Every modality of a sample gets the same rows (aligned), each
cropped, flipped and resized with the interpolation training uses for it.

Keys and their order follow the source shards. A sample that cannot be read (corrupt image, missing member)
or whose modalities disagree on their size is left out of *every* output tar of its shard, so the outputs stay
key-aligned with each other (training on ``[tok_rgb,crop_settings]`` stays valid). Such samples are counted and
listed in the returned :class:`PretokenizeReport`. Training that also reads the raw modalities
(``[rgb,tok_rgb,crop_settings]``) still works: :class:`MultimodalShards` aligns modalities by key, so a left-out
sample is a ``missing_member`` the loader counts and replaces, unless more than half of a shard's samples were
left out, which :mod:`~polymodal.data.multimodal.shard_index` rejects as modalities that do not belong together.

Resuming: each output tar is written to a temporary name and renamed into place, so an existing output is
complete. A shard whose outputs all exist is skipped; any other shard is redone in full (deterministic seeding
makes a redone output identical to the first). Skipped samples are only reported for shards processed in
this run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import multiprocessing
import os
import tarfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from polymodal.config import ConfigError
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.skips import SampleError
from polymodal.data.multimodal.transforms import AlignedAugment, centre_square_crop, sample_resized_crop
from polymodal.families.fourm.modalities import CROP_SETTINGS
from polymodal.files import atomic_output
from polymodal.progress import progress
from polymodal.tokenizers.carried import check_recorded_tokenizer, record_image_tokenizer
from polymodal.tokenizers.image.tokenizer import ImageTokenizer
from polymodal.tokenizers.loading import load_image_tokenizer

INT16_MAX_CODE = int(np.iinfo(np.int16).max)
DEFAULT_BATCH_SIZE = 64  # crops per tokenizer forward pass


@dataclass(frozen=True)
class CropOptions:
    """How many crops per sample, their output resolution and the training crop distribution."""

    n_crops: int = 5
    image_size: int = 64
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_crops < 1:
            raise ValueError(f"n_crops must be >= 1, got {self.n_crops}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {self.hflip}")


@dataclass(frozen=True)
class SkippedSample:
    """A sample left out of all outputs of its shard: the source shard files (a shard pattern), its key, a reason
    tag and details (naming the damaged member)."""

    shard: str
    key: str
    reason: str
    detail: str


@dataclass
class PretokenizeReport:
    """Shards written and skipped (already complete) in this run, and the samples left out."""

    written: list[str] = field(default_factory=list)
    complete: list[str] = field(default_factory=list)
    skipped_samples: list[SkippedSample] = field(default_factory=list)


def sample_generator(seed: int, key: str) -> torch.Generator:
    """A generator seeded by ``(seed, key)`` alone, so a sample's crops do not depend on where it is processed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def crop_settings(key: str, height: int, width: int, options: CropOptions) -> np.ndarray:
    """The ``(n_crops, 5)`` int64 rows ``(top, left, height, width, flip)`` of one sample (see module docstring)."""
    rows = [(*centre_square_crop(height, width), 0)]
    generator = sample_generator(options.seed, key)
    for _ in range(options.n_crops - 1):
        crop = sample_resized_crop(height, width, options.scale, options.ratio, generator)
        flip = bool(torch.rand((), generator=generator) < options.hflip)  # drawn after the crop, as in training
        rows.append((*crop, int(flip)))
    return np.asarray(rows, dtype=np.int64)


def code_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.int16 if codebook_size - 1 <= INT16_MAX_CODE else np.int32)


def encode_crops(tokenizer: ImageTokenizer, crops: torch.Tensor, batch_size: int) -> np.ndarray:
    """Codes ``(n_crops, h·w)`` of ``crops`` (natural units), ``batch_size`` crops per forward pass on the
    tokenizer's device, in the dtype the shards store."""
    device = next(tokenizer.parameters()).device
    codes = [tokenizer.encode(part.to(device)).flatten(1).cpu() for part in crops.split(batch_size)]
    return torch.cat(codes).numpy().astype(code_dtype(tokenizer.codebook_size))


def output_paths(out_root: Path, modalities: list[str], shard_name: str) -> list[Path]:
    """Every output tar of one shard: ``tok_<modality>`` per modality, then ``crop_settings``."""
    return [out_root / f"tok_{m}" / shard_name for m in modalities] + [out_root / CROP_SETTINGS / shard_name]


def find_shard_names(source_root: Path, modalities: list[str]) -> list[str]:
    """The ``shard-*.tar`` names present for every one of ``modalities``, sorted; an error if they differ."""
    names = {m: sorted(p.name for p in (source_root / m).glob("shard-*.tar")) for m in modalities}
    first = names[modalities[0]]
    if not first:
        raise ValueError(f"no shard-*.tar files in {source_root / modalities[0]}")
    differing = {m: n for m, n in names.items() if n != first}
    if differing:
        raise ValueError(f"modalities hold different shard files under {source_root}: {names}")
    return first


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@dataclass
class _CroppedSample:
    key: str
    settings: np.ndarray
    crops: dict[str, torch.Tensor]  # modality -> [n_crops, ...] crops at the output resolution


class _ShardPretokenizer:
    """Reads one shard, crops its samples and writes the encoded codes and crop rows of each."""

    def __init__(
        self,
        source_root: Path,
        tokenizers: Mapping[str, ImageTokenizer],
        options: CropOptions,
        batch_size: int,
        cache_dir: Path | None,
    ) -> None:
        self.source_root = source_root
        self.tokenizers = dict(tokenizers)
        self.options = options
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        spec = sorted({t.modality for t in self.tokenizers.values()})
        # Only its per-modality crop/flip/resize is used: the crop rows come from ``crop_settings``.
        self.augment = AlignedAugment(options.image_size, spec, train=False)

    def source_pattern(self, shard_name: str) -> str:
        return f"{self.source_root}/[{','.join(self.tokenizers)}]/{shard_name}"

    def _crop_sample(self, key: str, sample: dict[str, torch.Tensor]) -> _CroppedSample:
        sizes = {m: tuple(sample[m].shape[-2:]) for m in self.tokenizers}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"image modalities disagree on their size (H, W): {sizes}")
        height, width = next(iter(sizes.values()))
        settings = crop_settings(key, height, width, self.options)
        crops = {
            m: torch.stack(
                [
                    self.augment.augment_image(t.modality, sample[m], tuple(row[:4].tolist()), bool(row[4]))
                    for row in settings
                ]
            )
            for m, t in self.tokenizers.items()
        }
        return _CroppedSample(key, settings, crops)

    def _read(self, shard_name: str, skipped: list[SkippedSample]) -> Iterator[_CroppedSample]:
        pattern = self.source_pattern(shard_name)
        dataset = MultimodalShards(pattern, cache_dir=self.cache_dir, error_budget=len(self.tokenizers))
        for sample_id in range(len(dataset)):
            _, key = dataset.index.locate(sample_id)
            try:
                yield self._crop_sample(key, dataset[sample_id])
            except SampleError as error:
                skipped.append(SkippedSample(pattern, key, error.reason, error.detail))
            except ValueError as error:
                skipped.append(SkippedSample(pattern, key, "bad_image", str(error)))

    def _write_group(self, group: list[_CroppedSample], tars: dict[str, tarfile.TarFile]) -> None:
        n_crops = self.options.n_crops
        for modality in self.tokenizers:
            crops = torch.cat([s.crops[modality] for s in group])
            codes = encode_crops(self.tokenizers[modality], crops, self.batch_size)
            for index, sample in enumerate(group):
                rows = codes[index * n_crops : (index + 1) * n_crops]
                _add_member(tars[f"tok_{modality}"], f"{sample.key}.tok_{modality}.npy", _npy_bytes(rows))
        for sample in group:
            _add_member(tars[CROP_SETTINGS], f"{sample.key}.{CROP_SETTINGS}.npy", _npy_bytes(sample.settings))

    def run(self, shard_name: str, out_root: Path) -> list[SkippedSample]:
        """Write all outputs of one shard (atomically); return the samples left out."""
        skipped: list[SkippedSample] = []
        samples_per_group = max(1, self.batch_size // self.options.n_crops)
        folders = [f"tok_{m}" for m in self.tokenizers] + [CROP_SETTINGS]
        with ExitStack() as stack:
            tars = {}
            for folder, path in zip(folders, output_paths(out_root, list(self.tokenizers), shard_name), strict=True):
                tmp = stack.enter_context(atomic_output(path))
                tars[folder] = stack.enter_context(tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT))
            group: list[_CroppedSample] = []
            for sample in self._read(shard_name, skipped):
                group.append(sample)
                if len(group) == samples_per_group:
                    self._write_group(group, tars)
                    group = []
            if group:
                self._write_group(group, tars)
        return skipped


_worker_pretokenizer: _ShardPretokenizer | None = None


def _init_worker(pretokenizer: _ShardPretokenizer, threads: int) -> None:
    global _worker_pretokenizer
    torch.set_num_threads(threads)
    _worker_pretokenizer = pretokenizer


def _run_in_worker(out_root: Path, shard_name: str) -> list[SkippedSample]:
    assert _worker_pretokenizer is not None, "worker was started without _init_worker"
    return _worker_pretokenizer.run(shard_name, out_root)


def _run_shards(
    pretokenizer: _ShardPretokenizer, names: list[str], out_root: Path, workers: int
) -> Iterator[tuple[str, list[SkippedSample]]]:
    """Yield ``(shard name, skipped samples)`` as shards finish, in-process or in ``workers`` processes."""
    if workers <= 1:
        for name in names:
            yield name, pretokenizer.run(name, out_root)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),  # forking after torch has run can deadlock OpenMP
        initializer=_init_worker,
        initargs=(pretokenizer, threads),
    ) as pool:
        futures = {pool.submit(partial(_run_in_worker, out_root), name): name for name in names}
        for future in as_completed(futures):
            yield futures[future], future.result()


def pretokenize_4m(
    source_root: str | Path,
    tokenizers: Mapping[str, ImageTokenizer],
    out_root: str | Path | None = None,
    options: CropOptions | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    cache_dir: str | Path | None = None,
) -> PretokenizeReport:
    """Pre-tokenize every shard of ``source_root`` (see the module docstring); ``tokenizers`` maps each source
    modality folder to its tokenizer. Outputs go to ``out_root`` (default: ``source_root``). ``workers > 1``
    processes shards in that many processes; ``cache_dir`` holds the shard index cache (default: user cache)."""
    options = options or CropOptions()
    source_root = Path(source_root)
    out_root = source_root if out_root is None else Path(out_root)
    if not tokenizers:
        raise ValueError("pretokenize_4m needs at least one tokenizer")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    for folder, tokenizer in tokenizers.items():
        if not isinstance(tokenizer, ImageTokenizer):
            raise ValueError(f"tokenizer for {folder!r} is a {type(tokenizer).__name__}, not an ImageTokenizer")
        tokenizer.latent_grid(options.image_size)  # raises if image_size does not fit the downsampling
        tokenizer.eval()
    modalities = list(tokenizers)
    report = PretokenizeReport()
    pending = []
    for name in find_shard_names(source_root, modalities):
        done = all(p.is_file() for p in output_paths(out_root, modalities, name))
        (report.complete if done else pending).append(name)
    pretokenizer = _ShardPretokenizer(
        source_root, tokenizers, options, batch_size, None if cache_dir is None else Path(cache_dir)
    )
    with progress("pre-tokenizing shards", total=len(pending)) as advance:
        for name, skipped in _run_shards(pretokenizer, pending, out_root, workers):
            report.skipped_samples += skipped
            report.written.append(name)
            advance(1)
    report.written.sort()
    report.skipped_samples.sort(key=lambda s: (s.shard, s.key))
    return report


def pretokenize_main(args: argparse.Namespace) -> int:
    """Run what an ``add_pretokenize_arguments`` namespace describes; bad values raise ConfigError."""
    try:
        folders = [m for m, _ in args.tokenizer]
        if len(set(folders)) != len(folders):
            raise ValueError(f"--tokenizer names a modality twice: {folders}")
        tokenizers = {m: load_image_tokenizer(d).to(torch.device(args.device)) for m, d in args.tokenizer}
        codes_folders = {m: Path(args.out or args.source) / f"tok_{m}" for m in tokenizers}
        for modality, source in args.tokenizer:  # never mix the codes of two tokenizers in one folder
            check_recorded_tokenizer(source, codes_folders[modality])
        options = CropOptions(
            args.n_crops, args.image_size, tuple(args.scale), tuple(args.ratio), args.hflip, args.seed
        )
        batch_size = args.batch_size or DEFAULT_BATCH_SIZE
        report = pretokenize_4m(args.source, tokenizers, args.out, options, batch_size, args.workers, args.cache_dir)
        for modality, source in args.tokenizer:  # the codes carry their decoder
            record_image_tokenizer(source, codes_folders[modality])
    except ValueError as error:
        raise ConfigError(str(error)) from error
    print(f"pre-tokenized {len(report.written)} shards ({len(report.complete)} already complete)")
    for skipped in report.skipped_samples:
        print(f"skipped {skipped.shard} key {skipped.key} ({skipped.reason}): {skipped.detail}")
    if report.skipped_samples:
        print(f"{len(report.skipped_samples)} samples left out of all outputs of their shards")
    return 0
