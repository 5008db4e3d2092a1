"""Harness code that tests and benchmarks share."""
