"""`-o` argument lists shared by tests and benchmarks."""

from __future__ import annotations


def without_published(args: list[str]) -> list[str]:
    """`args` (pairs of "-o", "key=value") less the keys that only `publish` applies, which `serve` refuses
    (they are in the published files already); publish.repo stays, serve reads it."""
    pairs = list(zip(args[::2], args[1::2], strict=True))
    kept = [p for p in pairs if not p[1].startswith("publish.") or p[1].startswith("publish.repo=")]
    return [arg for pair in kept for arg in pair]
