"""A procedural 3-D scene world: every modality of a sample is derived from the same per-pixel ray hits
(:mod:`~polymodal.data.synth.scene` draws a scene, :mod:`~polymodal.data.synth.render` renders it). Nothing is
imported here, so that torch-free parts (e.g. the judge's settings) stay cheap to import."""
