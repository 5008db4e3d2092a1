"""Benchmarks: run each as `python -m bench.NAME` from the project folder (`make bench` runs them all)."""
