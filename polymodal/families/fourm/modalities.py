"""The 4M modality registry: what each modality is, how many tokens it has, and which embeddings it needs.

A modality is named ``stem`` or ``stem@res`` (``tok_rgb@64``, ``caption``). Its spec starts from a built-in
entry for the stem (:data:`BUILTIN_MODALITIES`, the upstream table with our synthetic-world tokenizers' sizes
left to config) and is overridden field by field from config::

    modalities:
      tok_rgb@64: {vocab_size: 256, patch_size: 8}   # our tiny rgb tokenizer: 64 px -> 8x8 codes
      caption: {max_tokens: 48}
      my_new_seq: {kind: seq, vocab_size: 30000, max_tokens: 64}

Kinds (4M's): ``img`` (a 2D token grid, or pixels when ``vocab_size`` is None), ``seq`` (text through the
WordPiece tokenizer, span-masked), ``seq_token`` (already tokenized id sequences, span-masked), ``seq_emb``
(precomputed embedding vectors, input only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ModalityKind = Literal["img", "seq", "seq_token", "seq_emb"]
KINDS: tuple[str, ...] = ("img", "seq", "seq_token", "seq_emb")
SEQUENCE_KINDS: tuple[str, ...] = ("seq", "seq_token", "seq_emb")
TEXT_VOCAB_SIZE = 30000
# The folder of pre-tokenized crops: per sample an (n_crops, 5) array of the crop rows below, in source pixels,
# shared by every tok_<modality> of the sample (written by ``polymodal pretokenize-4m``, read by the 4M data).
CROP_SETTINGS = "crop_settings"
CROP_COLUMNS = ("top", "left", "height", "width", "flip")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality.

    Attributes:
        name: the full name, ``stem`` or ``stem@res``; the key in batches and in the model's embedding dicts.
        kind: ``img``, ``seq``, ``seq_token`` or ``seq_emb``.
        vocab_size: number of token ids; None for pixels (``img``) and embeddings (``seq_emb``).
        max_tokens: tokens per sample: the grid size for images, the longest sequence for sequences.
        resolution: image side in pixels (from ``@res``); None for sequences.
        patch_size: pixels per token side: the patch for pixel input, the tokenizer's downsampling for tokens.
        num_channels: input channels of a pixel modality.
        embedding_dim: width of a ``seq_emb`` modality's vectors.
        encoder / decoder: whether the model embeds it as input / predicts it as target.
        path: the folder of the modality in a 4M shard tree (default: the stem).
        sincos_pos_emb: fixed sin-cos positions (else learned; upstream's global-token modalities).
    """

    name: str
    kind: ModalityKind
    vocab_size: int | None = None
    max_tokens: int | None = None
    resolution: int | None = None
    patch_size: int | None = None
    num_channels: int = 3
    embedding_dim: int | None = None
    encoder: bool = True
    decoder: bool = True
    path: str | None = None
    sincos_pos_emb: bool = True

    @property
    def stem(self) -> str:
        return self.name.partition("@")[0]

    @property
    def folder(self) -> str:
        return self.path or self.stem

    @property
    def is_image(self) -> bool:
        return self.kind == "img"

    @property
    def is_sequence(self) -> bool:
        return self.kind in SEQUENCE_KINDS

    @property
    def is_pixels(self) -> bool:
        """An image given to the model as pixels (patch-embedded), not as tokens."""
        return self.kind == "img" and self.vocab_size is None

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of an image modality's token grid."""
        if not self.is_image:
            raise ValueError(f"modality {self.name!r} is a {self.kind}, it has no grid")
        side = self.resolution // self.patch_size
        return side, side

    def validate(self) -> ModalitySpec:
        """Raise a ValueError naming this modality and the field when the spec is inconsistent."""
        where = f"modality {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.is_image:
            if not self.resolution or not self.patch_size:
                raise ValueError(f"{where}: an image needs a resolution (name@res) and a patch_size")
            if self.resolution % self.patch_size:
                raise ValueError(f"{where}: resolution {self.resolution} is not a multiple of patch {self.patch_size}")
            rows, cols = self.grid
            if self.max_tokens not in (None, rows * cols):
                raise ValueError(f"{where}: max_tokens {self.max_tokens} != grid {rows}x{cols}")
            if self.is_pixels and self.decoder:
                raise ValueError(f"{where}: pixels can only be an input (decoder: false); predict tok_ tokens instead")
        else:
            if not self.max_tokens or self.max_tokens < 1:
                raise ValueError(f"{where}: a {self.kind} needs max_tokens >= 1")
            if self.kind == "seq_emb":
                if not self.embedding_dim:
                    raise ValueError(f"{where}: a seq_emb needs embedding_dim")
                if self.decoder:
                    raise ValueError(f"{where}: a seq_emb is input only (decoder: false)")
            elif not self.vocab_size:
                raise ValueError(f"{where}: a {self.kind} needs vocab_size")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(f"{where}: vocab_size must be >= 2, got {self.vocab_size}")
        return self

    def num_positions(self) -> int:
        """Length of this modality's row in a masked batch.

        Images: the grid. ``seq``/``seq_token``: ``2 * (max_tokens + 1)``, room for the input tokens with their
        sentinels followed by the target span sequence (4M's layout). ``seq_emb``: ``max_tokens``.
        """
        if self.is_image:
            rows, cols = self.grid
            return rows * cols
        if self.kind == "seq_emb":
            return self.max_tokens
        return 2 * (self.max_tokens + 1)


def _image(vocab_size: int | None, **fields: Any) -> dict[str, Any]:
    return {"kind": "img", "vocab_size": vocab_size, "patch_size": 16, **fields}


def _text(max_tokens: int) -> dict[str, Any]:
    return {"kind": "seq", "vocab_size": TEXT_VOCAB_SIZE, "max_tokens": max_tokens}


# Upstream's table (vocab sizes of their released tokenizers; patch 16 at 224 px = 14x14 tokens). Our own
# tokenizers have other sizes: configs override vocab_size / patch_size per modality.
BUILTIN_MODALITIES: dict[str, dict[str, Any]] = {
    "rgb": _image(None, decoder=False),
    "tok_rgb": _image(16384),
    "tok_depth": _image(8192),
    "tok_normal": _image(8192),
    "tok_semseg": _image(4096),
    "tok_clip": _image(8192),
    "tok_sam_edge": _image(8192),
    "tok_canny_edge": _image(8192),
    "tok_dinov2": _image(8192, patch_size=14),
    "tok_imagebind": _image(8192, patch_size=14),
    "tok_dinov2_global": _image(8192, patch_size=56, sincos_pos_emb=False),
    "tok_imagebind_global": _image(8192, patch_size=56, sincos_pos_emb=False),
    "caption": _text(256),
    "det": _text(256),
    "metadata": _text(40),
    "human_poses": _text(275),
    "color_palette": _text(23),
    "sam_instance": _text(290),
    "t5_caption": {"kind": "seq_emb", "max_tokens": 77, "embedding_dim": 4096, "decoder": False},
}
FIELDS = {field.name for field in dataclasses.fields(ModalitySpec)} - {"name"}


def modality_spec(name: str, overrides: Mapping[str, Any] | None = None, default_resolution: int = 224) -> ModalitySpec:
    """The spec of ``name`` (``stem`` or ``stem@res``): the built-in entry of its stem updated by ``overrides``.

    Global-token modalities (``tok_*_global``) have no ``@res``; they get ``default_resolution``.
    """
    stem, _, res_text = name.partition("@")
    overrides = dict(overrides or {})
    unknown = set(overrides) - FIELDS
    if unknown:
        raise ValueError(f"modality {name!r}: unknown field(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
    if stem not in BUILTIN_MODALITIES and "kind" not in overrides:
        raise ValueError(
            f"modality {name!r} is not built in ({sorted(BUILTIN_MODALITIES)}); give its kind and sizes in config"
        )
    fields = {**BUILTIN_MODALITIES.get(stem, {}), **overrides}
    if fields["kind"] == "img":
        if res_text and not res_text.isdigit():
            raise ValueError(f"modality {name!r}: the part after '@' must be a resolution in pixels")
        fields.setdefault("resolution", int(res_text) if res_text else default_resolution)
    elif res_text:
        raise ValueError(f"modality {name!r}: a {fields['kind']} has no resolution, drop '@{res_text}'")
    return ModalitySpec(name=name, **fields).validate()


class ModalityRegistry(Mapping[str, ModalitySpec]):
    """The modalities of one model / dataset, in a fixed order (sorted by name, as 4M's training does)."""

    def __init__(self, specs: Mapping[str, ModalitySpec] | list[ModalitySpec]) -> None:
        items = specs.values() if isinstance(specs, Mapping) else specs
        self._specs = {spec.name: spec for spec in sorted(items, key=lambda spec: spec.name)}

    @classmethod
    def from_config(
        cls, names: list[str], overrides: Mapping[str, Mapping[str, Any]] | None = None, default_resolution: int = 224
    ) -> ModalityRegistry:
        """Specs for ``names``; ``overrides[name]`` updates a modality's fields (keys must be in ``names``)."""
        overrides = dict(overrides or {})
        stray = set(overrides) - set(names)
        if stray:
            raise ValueError(f"overrides given for modalities not in the list {sorted(names)}: {sorted(stray)}")
        if len(set(names)) != len(names):
            raise ValueError(f"modalities listed twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
        return cls([modality_spec(name, overrides.get(name), default_resolution) for name in names])

    def __getitem__(self, name: str) -> ModalitySpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown modality {name!r}; this registry has {list(self._specs)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def encoder_modalities(self) -> list[ModalitySpec]:
        return [spec for spec in self._specs.values() if spec.encoder]

    def decoder_modalities(self) -> list[ModalitySpec]:
        return [spec for spec in self._specs.values() if spec.decoder]

    def __repr__(self) -> str:
        return f"ModalityRegistry({list(self._specs)})"


def check_task_modalities(
    modalities: Mapping[str, ModalitySpec], inputs: Sequence[str], targets: Sequence[str], input_role: str = "input"
) -> None:
    """Raises a ValueError unless each of a task's modalities is in ``modalities``, listed once, in one role, and
    able to play it: an input (named ``input_role`` in errors, e.g. ``"conditioning"``) must be an encoder
    modality, a target a decoder one."""
    for role, names in ((input_role, inputs), ("target", targets)):
        unknown = [name for name in names if name not in modalities]
        if unknown:
            raise ValueError(f"unknown {role} modalities {unknown}: not in the registry {list(modalities)}")
        repeated = sorted({name for name in names if list(names).count(name) > 1})
        if repeated:
            raise ValueError(f"{role} modalities listed twice: {repeated}")
    both = sorted(set(inputs) & set(targets))
    if both:
        raise ValueError(f"modalities {both} are both {input_role} and target")
    for name in inputs:
        if not modalities[name].encoder:
            raise ValueError(
                f"modality {name!r} cannot condition: the model does not take it as input (encoder: false)"
            )
    for name in targets:
        if not modalities[name].decoder:
            raise ValueError(f"modality {name!r} cannot be a target: the model does not predict it (decoder: false)")
