"""A procedural 3-D scene world: every modality of a sample is derived from the same per-pixel ray hits."""

from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import CLASS_NAMES, SEMSEG_CLASSES, SHAPES, Scene, SceneObject, sample_scene

__all__ = ["CLASS_NAMES", "SEMSEG_CLASSES", "SHAPES", "Scene", "SceneObject", "render_scene", "sample_scene"]
