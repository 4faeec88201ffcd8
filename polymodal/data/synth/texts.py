"""The texts of synthetic scenes (every caption phrasing and the det string): a corpus for 4M's WordPiece tokenizer."""

from __future__ import annotations

from polymodal.data.synth.det_text import det_to_text
from polymodal.data.synth.render import render_scene


def synthetic_scene_texts(num_scenes: int, seed: int = 0, image_size: int = 64) -> list[str]:
    """All caption phrasings and the det string of ``num_scenes`` rendered synthetic scenes.

    Rendering at 64 px takes about 6 ms a scene on one CPU core; captions only use a handful of words,
    so a couple of thousand scenes cover them.
    """
    texts: list[str] = []
    for index in range(num_scenes):
        sample = render_scene(seed, index, image_size)
        texts.extend(sample["caption"])
        texts.append(det_to_text(sample["det"]["boxes"], sample["det"]["labels"], image_size))
    return texts
