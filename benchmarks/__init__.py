"""Benchmarks: each script prints its figures next to a baseline (see run_all.py)."""
