"""Parallelism applied to models: the device mesh, per-family plans, and the order they compose in."""
