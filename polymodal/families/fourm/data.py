"""The trainer's data object for 4M: pre-tokenized shards -> aligned samples -> masked batches.

Config (4M's levels: the main config composes a data config, which names an alphas config)::

    data:
      _target_: polymodal.families.fourm.data.FourMData
      train: scenes/[rgb,tok_rgb,tok_depth,caption,det,crop_settings]/shard-{00000..00002}.tar   # or {name: ...}
      val: scenes/[rgb,tok_rgb,tok_depth,caption,det,crop_settings]/shard-{00003..00003}.tar
      in_domains: [rgb@64, tok_rgb@64, tok_depth@64, caption, det]
      out_domains: [tok_rgb@64, tok_depth@64, caption, det]
      modalities: {tok_rgb@64: {vocab_size: 256, patch_size: 8}, caption: {vocab_size: 8192, max_tokens: 40}}
      alphas: ${include:../alphas/all2all_a0.5.yaml}  # (relative to this file) or one number: 0.5
      input_tokens: 128                                   # or [min, max]
      target_tokens: 128
      tokenizer_path: data/tokenizers/4m-wordpiece.json
      batch_size: 32

Modalities. The registry (:class:`ModalityRegistry`) holds ``in_domains`` + ``out_domains`` with the
``modalities`` overrides; a modality only in ``in_domains`` is encoder-only (``decoder: false``), one only in
``out_domains`` decoder-only. Each is read from its shard folder (``spec.folder``: ``tok_rgb@64`` from
``tok_rgb``); a source holding an image modality or ``det`` must also hold ``crop_settings``. Sources mix like
:class:`~polymodal.data.multimodal.data_module.MultimodalData`'s (``weights`` by name, default: by size); a
modality a source lacks is zeros/``[PAD]`` with ``<m>_present`` False.

Alphas. An alphas YAML (4M's simple or weighted form, :class:`DirichletMixture`) must give zero input alphas to
modalities outside ``in_domains`` and zero target alphas to modalities outside ``out_domains``. A single number
``a`` means input alpha ``a`` for ``in_domains`` and target alpha ``a`` for ``out_domains``, 0 elsewhere.

Batches. Samples are prepared per sample in the loader's workers (:class:`FourMSample`: one crop row for every
modality, random in training, row 0 in evaluation), collated with ``collate_with_absent`` into 4M's raw batch,
then masked in the worker by :class:`FourMMasking` with a generator seeded from the batch's position (the
loader's ``batch_transform``), so masks are the same for any worker count and after a resume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from polymodal.data.largest import LargestBatch
from polymodal.data.multimodal.collate import TensorSpec, collate_with_absent
from polymodal.data.multimodal.loader import Batch, MapDataset
from polymodal.data.multimodal.shard_patterns import expand_shard_pattern
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.sources import SourcedData
from polymodal.families.fourm.masking.alphas import DirichletMixture
from polymodal.families.fourm.masking.largest import largest_masked_batch, largest_token_counts
from polymodal.families.fourm.masking.masker import FourMMasking
from polymodal.families.fourm.modalities import CROP_SETTINGS, ModalityRegistry
from polymodal.families.fourm.samples import FourMSample
from polymodal.tokenizers.carried import TEXT, export_fingerprint, recorded_tokenizer
from polymodal.tokenizers.text.wordpiece import load_wordpiece

TokenBudget = int | Sequence[int]


def fourm_registry(
    in_domains: Sequence[str], out_domains: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> ModalityRegistry:
    """The registry of ``in_domains`` + ``out_domains``: ``encoder`` / ``decoder`` say whether a modality is in
    ``in_domains`` / ``out_domains`` (input-only ones get ``decoder: false``, ...); an override that contradicts the
    domains is an error, and so is a domain the modality cannot take (pixels as a target)."""
    for label, domains in (("in_domains", in_domains), ("out_domains", out_domains)):
        if isinstance(domains, str) or not isinstance(domains, Sequence) or not domains:
            raise ValueError(f"{label} must be a non-empty list of modality names, got {domains!r}")
    names = list(dict.fromkeys([*in_domains, *out_domains]))
    overrides = dict(overrides or {})
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise ValueError(f"modalities overrides name {stray}, which are in neither in_domains nor out_domains {names}")
    merged = {}
    for name in names:
        fields = dict(overrides.get(name, {}))
        for role, listed, domains in (("encoder", name in in_domains, "in"), ("decoder", name in out_domains, "out")):
            if fields.get(role, listed) != listed:
                raise ValueError(
                    f"modality {name!r}: override {role}: {fields[role]} contradicts {domains}_domains, "
                    f"which {'lists' if listed else 'does not list'} it"
                )
            fields[role] = listed
        merged[name] = fields
    return ModalityRegistry.from_config(names, merged)


def fourm_alphas(
    alphas: str | float | Mapping[str, Any],
    registry: ModalityRegistry,
    in_domains: Sequence[str],
    out_domains: Sequence[str],
) -> DirichletMixture:
    """The Dirichlet mixture of an alphas config (its content, as ``${include:...}`` places it), an alphas YAML path,
    or a single alpha, checked against the in/out domains."""
    if isinstance(alphas, (int, float)) and not isinstance(alphas, bool):
        entries = {
            name: {
                "input_alphas": [float(alphas) if name in in_domains else 0.0],
                "target_alphas": [float(alphas) if name in out_domains else 0.0],
            }
            for name in registry
        }
        return DirichletMixture.from_entries(entries, registry)
    if isinstance(alphas, Mapping):
        mixture = DirichletMixture.from_config(dict(alphas), registry)
    elif isinstance(alphas, (str, Path)):
        if not Path(alphas).is_file():
            raise FileNotFoundError(f"alphas config {alphas} does not exist")
        mixture = DirichletMixture.from_yaml(alphas, registry)
    else:
        raise ValueError(f"alphas must be an alphas config, a path to one, or one number, got {alphas!r}")
    for role, domains, per_component in (
        ("input", in_domains, mixture.input_alphas),
        ("target", out_domains, mixture.target_alphas),
    ):
        for column, name in enumerate(mixture.modalities):
            if name not in domains and any(component[column] > 0 for component in per_component):
                raise ValueError(
                    f"alphas config {alphas}: modality {name!r} has non-zero {role} alphas "
                    f"{[c[column] for c in per_component]} but is not in {'in' if role == 'input' else 'out'}_domains "
                    f"{list(domains)}"
                )
    return mixture


def raw_batch_specs(registry: ModalityRegistry) -> dict[str, TensorSpec]:
    """Per-sample (shape, dtype) of every modality in 4M's raw batch, used to fill modalities a source lacks."""
    specs: dict[str, TensorSpec] = {}
    for name, spec in registry.items():
        if spec.is_pixels:
            specs[name] = ((spec.num_channels, spec.resolution, spec.resolution), torch.float32)
        else:
            specs[name] = ((spec.num_positions() if spec.is_image else spec.max_tokens,), torch.int64)
    return specs


class MaskBatch:
    """The loader's batch transform: 4M masking of a collated raw batch; ``sample_id`` is kept beside it."""

    def __init__(self, masking: FourMMasking) -> None:
        self.masking = masking

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        raw = {key: value for key, value in batch.items() if key != "sample_id"}
        return {**self.masking(raw, generator), "sample_id": batch["sample_id"]}


class FourMData(SourcedData):
    """Train loader (``train``), validation batches, ``info()`` and skip counts for 4M pre-training.

    Args:
        train, val: a 4M shard pattern or ``{name: pattern}`` (a mixture); ``val=None``: no validation set.
        in_domains, out_domains: the input and target modality names (``tok_rgb@64``, ``caption``, ...).
        alphas: an alphas YAML path (4M's forms) or one alpha for every modality (see the module docstring).
        tokenizer_path: the WordPiece text tokenizer (4M id layout) for caption/det.
        batch_size: samples per rank and step.
        input_tokens, target_tokens: per-sample token budgets, an int or an inclusive ``[min, max]``.
        modalities: per-modality field overrides (vocab sizes of our tokenizers, patch sizes, max_tokens, ...).
        weights: mixture weights by source name (only with dict sources); default proportional to size.
        num_workers, multiprocessing_context: loader worker processes per rank and their start method.
        error_budget: distinct bad samples tolerated before the loader stops with an error.
        cache_dir: the cache root (default: the user cache, :func:`polymodal.files.cache_root`); shard
            indexes are cached under ``<cache_dir>/shard_index``.
        storage_options: fsspec options for remote shards.
        seed, dp_rank, dp_world: injected by the trainer.
    """

    def __init__(
        self,
        train: str | Mapping[str, str],
        val: str | Mapping[str, str] | None,
        in_domains: Sequence[str],
        out_domains: Sequence[str],
        alphas: str | float,
        tokenizer_path: str,
        batch_size: int,
        input_tokens: TokenBudget,
        target_tokens: TokenBudget,
        modalities: Mapping[str, Mapping[str, Any]] | None = None,
        weights: Mapping[str, float] | None = None,
        num_workers: int = 0,
        multiprocessing_context: str | None = None,
        error_budget: int = 100,
        cache_dir: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world: int = 1,
    ) -> None:
        if weights is not None and not isinstance(train, Mapping):
            raise ValueError("weights are only meaningful for a mixture: give `train` as {name: pattern}")
        super().__init__(batch_size, num_workers, error_budget, cache_dir, storage_options, seed, dp_rank, dp_world)
        self.in_domains = list(in_domains)
        self.out_domains = list(out_domains)
        self.modalities = fourm_registry(self.in_domains, self.out_domains, modalities)
        self.alphas = fourm_alphas(alphas, self.modalities, self.in_domains, self.out_domains)
        self.masking = FourMMasking(self.modalities, input_tokens, target_tokens, self.alphas)
        self.input_tokens, self.target_tokens = input_tokens, target_tokens
        self.tokens_per_sample = _upper(input_tokens) + _upper(target_tokens)
        tokenizer = load_wordpiece(tokenizer_path)
        self._tokenizer_path = tokenizer_path
        self._image_tokenizers: dict[str, set[Path]] = {}  # recorded beside the codes of each source
        self._check_text_vocab(tokenizer.get_vocab_size())
        self._open_splits(
            train,
            val,
            weights,
            collate=partial(
                collate_with_absent, modalities=list(self.modalities), specs=raw_batch_specs(self.modalities)
            ),
            train_transform=FourMSample(self.modalities, tokenizer, train=True),
            eval_transform=FourMSample(self.modalities, tokenizer, train=False),
            batch_transform=MaskBatch(self.masking),
            eval_batch_transform=MaskBatch(self.masking),
            multiprocessing_context=multiprocessing_context,
        )

    @classmethod
    def largest_batch(
        cls,
        in_domains: Sequence[str],
        out_domains: Sequence[str],
        batch_size: int,
        input_tokens: TokenBudget,
        target_tokens: TokenBudget,
        modalities: Mapping[str, Mapping[str, Any]] | None = None,
        device: torch.device | str = "cpu",
        **sources_and_loading: Any,
    ) -> LargestBatch:
        """A masked batch of the largest shape ``train`` yields (:mod:`polymodal.families.fourm.masking.largest`:
        full budgets, targets in the largest vocabularies), from the config alone: no shard or tokenizer is read
        (``sources_and_loading``: the other arguments, which change no shape). See :mod:`polymodal.data.largest`."""
        registry = fourm_registry(list(in_domains), list(out_domains), modalities)
        counts = largest_token_counts(registry, _upper(input_tokens), _upper(target_tokens))
        batch = largest_masked_batch(registry, batch_size, counts, device)
        targets = ", ".join(f"{name} {target}" for name, (_, target) in counts.items() if target)
        description = (
            f"{batch_size} samples of {_upper(input_tokens)} input + {_upper(target_tokens)} target tokens "
            f"(targets in the largest vocabularies: {targets})"
        )
        return LargestBatch({**batch, "sample_id": torch.arange(batch_size, device=device)}, description)

    def _check_text_vocab(self, tokenizer_vocab: int) -> None:
        for spec in self.modalities.values():
            if spec.kind == "seq" and spec.vocab_size < tokenizer_vocab:
                raise ValueError(
                    f"modality {spec.name!r} has vocab_size {spec.vocab_size} but the text tokenizer has "
                    f"{tokenizer_vocab} ids; set modalities.{spec.name}.vocab_size >= {tokenizer_vocab}"
                )

    def _missing_modalities(self, sources: Mapping[str, MapDataset]) -> list[str]:
        provided = {folder for source in sources.values() for folder in source.modalities}
        return [spec.name for spec in self.modalities.values() if spec.folder not in provided]

    def _open_source(self, name: str, pattern: str, split: str) -> MultimodalShards:
        available = expand_shard_pattern(pattern)
        wanted = [s for s in self.modalities.values() if s.folder in available]
        if not wanted:
            folders = sorted({s.folder for s in self.modalities.values()})
            raise ValueError(f"{split} source {name!r} ({pattern}) has folders {list(available)}, none of {folders}")
        spatial = [s.name for s in wanted if s.is_image or s.stem == "det"]
        if spatial and CROP_SETTINGS not in available:
            raise ValueError(
                f"{split} source {name!r} ({pattern}) has {spatial} but no {CROP_SETTINGS!r} folder; add it to the "
                "[...] list (polymodal pretokenize-4m writes it next to the tok_ folders)"
            )
        folders = list(dict.fromkeys(s.folder for s in wanted)) + ([CROP_SETTINGS] if spatial else [])
        for spec in wanted:
            recorded = recorded_tokenizer(available[spec.folder][0])
            if spec.is_image and not spec.is_pixels and recorded is not None:
                self._image_tokenizers.setdefault(spec.name, set()).add(recorded)
        return self._open_shards(pattern, folders)

    def tokenizer_paths(self) -> dict[str, str]:
        """The WordPiece tokenizer and the image tokenizers ``pretokenize-4m`` recorded beside the codes (a run
        carries copies); a modality whose sources were encoded by different tokenizers is an error."""
        paths = {TEXT: self._tokenizer_path}
        for name, recorded in sorted(self._image_tokenizers.items()):
            if len({export_fingerprint(directory) for directory in recorded}) > 1:
                raise ValueError(f"the sources of {name} hold codes of different tokenizers: {sorted(recorded)}")
            paths[name] = str(min(recorded))
        return paths

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "format": "4m",
            "modalities": list(self.modalities),
            "in_domains": self.in_domains,
            "out_domains": self.out_domains,
            "input_tokens": self.input_tokens,
            "target_tokens": self.target_tokens,
            "alpha_components": self.alphas.num_components,
            **self._sample_counts(self.train_sources, self.train_dataset),
        }
        return info


def _upper(budget: TokenBudget) -> int:
    """The largest number of tokens a budget (int or ``[min, max]``) allows."""
    return int(budget) if isinstance(budget, int) else int(max(budget))
