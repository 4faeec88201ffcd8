"""Aligned random-resized-crop + flip augmentation for multimodal scene samples.

One set of crop parameters ``(top, left, height, width)`` and one flip decision are drawn per sample
and applied to every spatial modality, so pixels (and boxes) stay aligned across modalities. Each
modality is then resized to its own target resolution, given as ``name@res`` in the modality spec.

Interpolation per modality (overridable with ``interpolation=``):

* ``rgb``: bilinear with antialiasing.
* ``depth``: nearest. Depth is metric, and blending a foreground and a background depth across an
  object boundary would invent surfaces that are not in the scene.
* ``normal``: bilinear with antialiasing, then every vector is renormalised to unit length (vectors
  of near-zero length are left as they are). A horizontal flip negates the x component.
* ``semseg``, ``edges``: nearest, so class ids and 0/255 edges stay exact.
* ``det``: boxes (xyxy pixels) follow the crop, resize and flip; they are clamped to the output
  canvas, and boxes whose area falls below 1 px² are dropped together with their labels (and names).
  Output boxes are in pixels of the ``det`` target resolution.
* ``twin_rgb`` and ``twin_caption`` (a shape twin's picture and captions, :mod:`polymodal.data.synth.twins`) as
  ``rgb`` and ``caption``: the twin gets its scene's crop and flip, so the two differ only where the shape does.
* ``caption``, ``label`` and non-spatial keys not named in the spec pass through untouched. A spatial
  modality present in the sample but missing from the spec is an error (it would come out unaligned);
  a spec modality missing from the sample is simply skipped.

Sizes: any source size works. An image smaller than a target resolution is upscaled (the crop is drawn inside
the image, then resized up), a larger one downscaled; only the image modalities of one sample must agree on their
(H, W). Bad samples: image modalities of different sizes (``wrong_shape``), or of the wrong channel count or dtype
(``wrong_mode``; e.g. a colour depth map) raise :class:`SampleError` for the loader to skip; a wrong ``det`` or a
modality missing from the spec is a ``ValueError``.

Randomness: per sample, the crop parameters are drawn first (:func:`sample_resized_crop`), then one
uniform number decides the flip, all from the ``generator`` passed to ``__call__`` (global RNG if None).

With ``to_float=True`` (the default) ``rgb`` comes out as float32 in ``[0, 1]``; otherwise it stays
uint8. No mean/std normalisation is applied here. Every output tensor is a plain ``torch.Tensor``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from polymodal.data.multimodal.skips import SampleError
from polymodal.data.synth.labels import LABEL_MODALITIES

TWIN_PREFIX = "twin_"  # a shape twin's modalities (polymodal.data.synth.twins): `twin_rgb` is an `rgb`, and so on
TWIN_MODALITIES = ("twin_rgb", "twin_caption")
IMAGE_MODALITIES = ("rgb", "depth", "normal", "semseg", "edges", "twin_rgb")
LABEL_NAMES = tuple(LABEL_MODALITIES.values())  # the scene labels: count, colour, shape
PASSTHROUGH_MODALITIES = ("caption", "twin_caption", *LABEL_NAMES)
KNOWN_MODALITIES = IMAGE_MODALITIES + ("det",) + PASSTHROUGH_MODALITIES

DEFAULT_INTERPOLATION = {
    "rgb": InterpolationMode.BILINEAR,
    "depth": InterpolationMode.NEAREST,
    "normal": InterpolationMode.BILINEAR,
    "semseg": InterpolationMode.NEAREST,
    "edges": InterpolationMode.NEAREST,
}

# Expected channel count of each image modality; ``None`` means a 2-D [H, W] tensor.
EXPECTED_CHANNELS = {"rgb": 3, "depth": 1, "normal": 3, "semseg": None, "edges": 1}
MASK_MODALITIES = ("semseg", "edges")
DET_PER_BOX_FIELDS = ("labels", "names")
MIN_BOX_AREA = 1.0
NORMAL_EPS = 1e-6

CropBox = tuple[int, int, int, int]  # top, left, height, width


def modality_kind(name: str) -> str:
    """The modality whose format ``name`` has: a twin's modality is its scene's (``twin_rgb`` -> ``rgb``)."""
    return name.removeprefix(TWIN_PREFIX) if name in TWIN_MODALITIES else name


def parse_modalities_spec(modalities_spec: Sequence[str], size: int | Mapping[str, int]) -> dict[str, int | None]:
    """Map each modality of a spec like ``["rgb@64", "depth", "caption"]`` to its target resolution.

    A modality without ``@res`` gets ``size`` (or ``size[name]`` when ``size`` is a dict). Captions and
    labels have no resolution (``None``) and may not be given one.
    """
    resolutions: dict[str, int | None] = {}
    for entry in modalities_spec:
        name, sep, res_text = entry.partition("@")
        if name not in KNOWN_MODALITIES:
            raise ValueError(f"modalities_spec entry {entry!r}: unknown modality {name!r}; known: {KNOWN_MODALITIES}")
        if name in resolutions:
            raise ValueError(f"modalities_spec entry {entry!r}: modality {name!r} listed twice")
        if name in PASSTHROUGH_MODALITIES:
            if sep:
                raise ValueError(f"modalities_spec entry {entry!r}: {name!r} takes no resolution")
            resolutions[name] = None
            continue
        if sep:
            if not res_text.isdigit() or int(res_text) < 1:
                raise ValueError(f"modalities_spec entry {entry!r}: resolution {res_text!r} is not a positive integer")
            resolutions[name] = int(res_text)
        else:
            resolutions[name] = _default_resolution(name, size)
    return resolutions


def _default_resolution(name: str, size: int | Mapping[str, int]) -> int:
    if isinstance(size, Mapping):
        if name not in size:
            raise ValueError(f"modality {name!r} has no '@res' in the spec and no entry in size={dict(size)}")
        resolution = size[name]
    else:
        resolution = size
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"size for modality {name!r} must be a positive int, got {resolution!r}")
    return resolution


def sample_resized_crop(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> CropBox:
    """Draw random-resized-crop parameters ``(top, left, h, w)`` like torchvision, from ``generator``.

    Tries 10 times for a crop with area fraction in ``scale`` and log-uniform aspect ratio in ``ratio``
    that fits the image; falls back to the largest centre crop with the aspect ratio clamped to ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def centre_square_crop(height: int, width: int) -> CropBox:
    """The largest square crop centred in a ``height`` x ``width`` image."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


class AlignedAugment:
    """Crop, flip and resize all spatial modalities of a sample identically (see module docstring).

    Args:
        size: default target resolution (int), or a dict ``{modality: resolution}``.
        modalities_spec: modalities to process, each ``name`` or ``name@res``.
        scale, ratio: random-resized-crop area-fraction and aspect-ratio ranges (training only).
        hflip: probability of a horizontal flip (training only).
        train: random crop + flip when True; largest centre square crop, no flip, when False.
        to_float: convert ``rgb`` from uint8 to float32 in ``[0, 1]``.
        interpolation: per-modality overrides of the default interpolation modes.
    """

    def __init__(
        self,
        size: int | Mapping[str, int],
        modalities_spec: Sequence[str],
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        train: bool = True,
        to_float: bool = True,
        interpolation: Mapping[str, InterpolationMode] | None = None,
    ) -> None:
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
        self.resolutions = parse_modalities_spec(modalities_spec, size)
        self.interpolation = {name: DEFAULT_INTERPOLATION[modality_kind(name)] for name in IMAGE_MODALITIES}
        for name, mode in (interpolation or {}).items():
            if name not in IMAGE_MODALITIES:
                raise ValueError(f"interpolation given for {name!r}, which is not one of {IMAGE_MODALITIES}")
            self.interpolation[name] = InterpolationMode(mode)
        self.scale = scale
        self.ratio = ratio
        self.hflip = hflip
        self.train = train
        self.to_float = to_float

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Augment one sample; randomness comes from ``generator`` (or the global torch RNG)."""
        unlisted_spatial = [k for k in sample if k in IMAGE_MODALITIES + ("det",) and k not in self.resolutions]
        if unlisted_spatial:
            raise ValueError(
                f"sample has spatial modalities {unlisted_spatial} missing from the modalities spec; "
                "they would come out unaligned"
            )
        source_size = self._source_size(sample)
        if source_size is None:
            return dict(sample)
        height, width = source_size
        if self.train:
            crop = sample_resized_crop(height, width, self.scale, self.ratio, generator)
            flip = bool(torch.rand((), generator=generator) < self.hflip)
        else:
            crop, flip = centre_square_crop(height, width), False
        out = dict(sample)
        for name in IMAGE_MODALITIES:
            if name in sample:
                out[name] = self.augment_image(name, sample[name], crop, flip)
        if "det" in sample:
            out["det"] = self._augment_boxes(sample["det"], (height, width), crop, flip)
        return out

    def _source_size(self, sample: Mapping[str, Any]) -> tuple[int, int] | None:
        """The common (H, W) of the sample's image modalities; None when it has no spatial modality."""
        sizes = {}
        for name in IMAGE_MODALITIES:
            if name in sample:
                sizes[name] = _validated_image_size(name, sample[name])
        if not sizes:
            if "det" in sample:
                raise ValueError("'det' needs an image modality in the sample to define its canvas size")
            return None
        if len(set(sizes.values())) > 1:
            raise SampleError("wrong_shape", None, f"image modalities disagree on their size (H, W): {sizes}")
        return next(iter(sizes.values()))

    def augment_image(self, name: str, image: torch.Tensor, crop: CropBox, flip: bool) -> torch.Tensor:
        resolution = self.resolutions[name]
        wrapped = tv_tensors.Mask(image) if name in MASK_MODALITIES else tv_tensors.Image(image)
        result = F.resized_crop(
            wrapped,
            *crop,
            size=[resolution, resolution],
            interpolation=self.interpolation[name],
            antialias=True,
        )
        if flip:
            result = F.horizontal_flip(result)
        result = result.as_subclass(torch.Tensor)
        if name == "normal":
            result = _renormalise(result)
            if flip:
                result[0] = -result[0]
        if modality_kind(name) == "rgb" and self.to_float:
            result = result.to(torch.float32) / 255.0
        return result

    def _augment_boxes(
        self, det: Mapping[str, Any], canvas: tuple[int, int], crop: CropBox, flip: bool
    ) -> dict[str, Any]:
        boxes, labels = _validated_det(det)
        resolution = self.resolutions["det"]
        wrapped = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas)
        result = F.resized_crop(wrapped, *crop, size=[resolution, resolution])
        if flip:
            result = F.horizontal_flip(result)
        moved = result.as_subclass(torch.Tensor).clamp(0.0, float(resolution))
        area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
        keep = area >= MIN_BOX_AREA
        out = dict(det)
        out["boxes"] = moved[keep].to(torch.float32)
        out["labels"] = labels[keep]
        if "names" in det:
            out["names"] = [n for n, k in zip(det["names"], keep.tolist(), strict=True) if k]
        return out


def _validated_image_size(name: str, image: Any) -> tuple[int, int]:
    """(H, W) of one image modality; a valid image of the wrong channel layout or dtype is a ``wrong_mode``
    :class:`SampleError` (a property of the data, so the loader skips the sample)."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"modality {name!r} must be a torch.Tensor, got {type(image).__name__}")
    channels = EXPECTED_CHANNELS[modality_kind(name)]
    expected_ndim = 2 if channels is None else 3
    if image.ndim != expected_ndim or (channels is not None and image.shape[0] != channels):
        layout = "[H, W]" if channels is None else f"[{channels}, H, W]"
        raise SampleError("wrong_mode", None, f"modality {name!r} must have shape {layout}, got {tuple(image.shape)}")
    if modality_kind(name) == "rgb" and image.dtype != torch.uint8:
        raise SampleError("wrong_mode", None, f"modality {name!r} must be uint8, got {image.dtype}")
    return int(image.shape[-2]), int(image.shape[-1])


def _validated_det(det: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(det, Mapping) or "boxes" not in det or "labels" not in det:
        raise ValueError("modality 'det' must be a dict with 'boxes' and 'labels'")
    unknown = set(det) - {"boxes", *DET_PER_BOX_FIELDS}
    if unknown:
        raise ValueError(f"modality 'det' has unknown fields {sorted(unknown)}")
    boxes = torch.as_tensor(det["boxes"], dtype=torch.float32)
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    labels = torch.as_tensor(det["labels"], dtype=torch.int64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"det 'boxes' must have shape [N, 4], got {tuple(boxes.shape)}")
    if labels.ndim != 1:
        raise ValueError(f"det 'labels' must have shape [N], got {tuple(labels.shape)}")
    for field in DET_PER_BOX_FIELDS:
        if field in det and len(det[field]) != boxes.shape[0]:
            raise ValueError(f"det {field!r} has {len(det[field])} entries for {boxes.shape[0]} boxes")
    return boxes, labels


def _renormalise(normals: torch.Tensor) -> torch.Tensor:
    """Scale each normal vector back to unit length; near-zero vectors are kept as they are."""
    length = normals.norm(dim=0, keepdim=True)
    return torch.where(length > NORMAL_EPS, normals / length.clamp_min(NORMAL_EPS), normals)
