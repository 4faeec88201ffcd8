"""Checkpoints: complete, atomic, resharding DCP checkpoints of a run, and consolidated weights (safetensors)."""
