"""Held-out evaluation of a 4M on synthetic scenes beside trivial baselines: tasks, metrics, the report."""
