"""An independent judge of images of the synthetic world: which colours and which shapes they show.

Evaluating a generator with itself says little; the judge is a small convolutional network trained here on
rendered scenes, labelled by the renderer (a scene's first caption names the colour and shape of every visible
object), so it knows nothing of any model under test. It scores every location of the image for each of the
:data:`~polymodal.data.synth.scoring.COLOURS` and :data:`~polymodal.data.synth.scene.SHAPES` and keeps the
maximum over locations (an object anywhere makes its colour present), so it reads images of any size.

Training sees each render also blurred at a random strength (down- and up-sampled), as images that went through
an image tokenizer are. :func:`judge_for` trains a judge once per setting and keeps it in the cache
(``cache_root()/judges``); training is a pure function of its settings, so a cached judge is the one a fresh
training would give.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from polymodal.data.synth.judge_settings import JudgeSettings
from polymodal.data.synth.render import render_scenes
from polymodal.data.synth.scene import SHAPES
from polymodal.data.synth.scoring import COLOURS, Attributes, mentioned_attributes
from polymodal.files import atomic_output
from polymodal.files import cache_dir as polymodal_cache_dir
from polymodal.progress import progress

log = logging.getLogger("polymodal")

LABELS = (*COLOURS, *SHAPES)


def attribute_targets(attributes: list[Attributes]) -> Tensor:
    """``[N, len(LABELS)]`` 0/1 targets of per-image (colours, shapes) sets."""
    targets = torch.zeros(len(attributes), len(LABELS))
    for row, (colours, shapes) in enumerate(attributes):
        for name in colours | shapes:
            targets[row, LABELS.index(name)] = 1.0
    return targets


class AttributeJudge(nn.Module):
    """Colour and shape presence logits ``[B, len(LABELS)]`` of rgb images ``[B, 3, H, W]`` in [0, 1]."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        channels = [3, width, 2 * width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for index, (inputs, outputs) in enumerate(zip(channels, channels[1:], strict=False)):
            stride = 2 if index in (1, 3) else 1
            layers += [nn.Conv2d(inputs, outputs, 3, stride, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.GELU()]
        self.features = nn.Sequential(*layers)
        self.scores = nn.Conv2d(channels[-1], len(LABELS), 1)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.scores(self.features(pixels * 2 - 1)).amax(dim=(2, 3))

    @torch.no_grad()
    def judge(self, pixels: Tensor, batch_size: int = 64) -> list[Attributes]:
        """The (colours, shapes) each image shows: the labels whose probability is above one half."""
        device = self.scores.weight.device
        logits = torch.cat([self(part.to(device).float()).cpu() for part in pixels.split(batch_size)])
        return [
            (
                {n for n, on in zip(LABELS, row, strict=True) if on and n in COLOURS},
                {n for n, on in zip(LABELS, row, strict=True) if on and n in SHAPES},
            )
            for row in (logits > 0).tolist()
        ]


def blurred(pixels: Tensor, generator: torch.Generator) -> Tensor:
    """Each image down-sampled by a random factor in [1, 4) and back (bilinear): a tokenizer's softness."""
    out = torch.empty_like(pixels)
    height, width = pixels.shape[-2:]
    factors = 1 + 3 * torch.rand(len(pixels), generator=generator)
    for index, factor in enumerate(factors.tolist()):
        small = (max(4, round(height / factor)), max(4, round(width / factor)))
        image = F.interpolate(pixels[index : index + 1], size=small, mode="bilinear", antialias=True)
        out[index] = F.interpolate(image, size=(height, width), mode="bilinear")[0]
    return out


def rendered_examples(seed: int, num_scenes: int, size: int) -> tuple[Tensor, Tensor]:
    """rgb in [0, 1] ``[N, 3, size, size]`` and the renderer's label targets of scenes ``0 .. N - 1`` of ``seed``."""
    scenes = render_scenes(seed, num_scenes, size, f"rendering {num_scenes} scenes for the judge")
    pixels = torch.stack([scene["rgb"] for scene in scenes]).float() / 255.0
    return pixels, attribute_targets([mentioned_attributes(scene["caption"][0]) for scene in scenes])


def train_judge(settings: JudgeSettings) -> AttributeJudge:
    """A judge trained on CPU-sized data (module docstring); deterministic for given settings."""
    pixels, targets = rendered_examples(settings.seed, settings.num_scenes, settings.size)
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        judge = AttributeJudge(settings.width)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps)
    with progress("training the colour and shape judge", total=settings.steps) as advance:
        for _ in range(settings.steps):
            rows = torch.randint(len(pixels), (settings.batch_size,), generator=generator)
            batch = pixels[rows]
            flip = torch.rand(len(rows), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            soft = torch.rand(len(rows), generator=generator) < 0.5
            batch = torch.where(soft[:, None, None, None], blurred(batch, generator), batch)
            loss = F.binary_cross_entropy_with_logits(judge(batch), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            advance(1)
    return judge.eval()


def judge_for(settings: JudgeSettings, cache_dir: str | Path | None = None) -> AttributeJudge:
    """The judge of ``settings`` from ``cache_dir`` (default ``cache_root()/judges``), trained and kept there
    the first time (and again, with a warning, when the kept file is damaged)."""
    path = Path(cache_dir) if cache_dir is not None else polymodal_cache_dir("judges")
    path = path / settings.cache_name
    judge = AttributeJudge(settings.width)
    if path.is_file():
        try:
            judge.load_state_dict(load_file(path))
            return judge.eval()
        except (SafetensorError, RuntimeError, OSError) as error:  # a damaged cache file: train the judge again
            log.warning("the cached judge %s cannot be read (%s): training it again", path, error)
    else:
        log.info("no cached judge at %s: training one", path)
    judge = train_judge(settings)
    with atomic_output(path) as staged:
        save_file(judge.state_dict(), str(staged))
    return judge
