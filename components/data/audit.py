"""The dataset audit's image side: perceptual hashes of the listed images and the pairs that are near-duplicates
(the same item re-encoded, resized or shot twice), which check-dataset's pixel hashes do not see."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

HASH_BITS = 64  # imagehash's phash: an 8x8 DCT sign pattern


def perceptual_hash(path: str) -> int:
    """The 64-bit perceptual hash (pHash) of an image file, upright and in RGB."""
    import imagehash

    from components.data.images import load_rgb

    return int(str(imagehash.phash(load_rgb(path))), 16)


def near_pairs(hashes: list[int], max_hamming: int) -> list[tuple[int, int, int]]:
    """Every pair (i, j), i < j, whose hashes differ in at most `max_hamming` bits, with that distance.

    Pigeonhole: cut the bits into max_hamming + 1 blocks; two hashes that close agree on at least one whole
    block, so only pairs sharing a block are compared (not all n^2 of them)."""
    blocks = max_hamming + 1
    width = math.ceil(HASH_BITS / blocks)
    candidates: set[tuple[int, int]] = set()
    for shift in range(0, HASH_BITS, width):
        mask = (1 << min(width, HASH_BITS - shift)) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> shift) & mask].append(i)
        for members in buckets.values():
            candidates.update(combinations(members, 2))
    found = [(i, j, (hashes[i] ^ hashes[j]).bit_count()) for i, j in candidates]
    return sorted(pair for pair in found if pair[2] <= max_hamming)


@dataclass(frozen=True)
class Listed:
    """One listed image: its list file and line, its path (as listed and as a file) and its label."""

    split: str
    where: str  # file:line
    path: str
    file: str
    label: int


@dataclass(frozen=True)
class NearDuplicate:
    """Two listed images within the Hamming distance: a leak when they sit in different splits, a likely
    label error when they carry different labels."""

    a: Listed
    b: Listed
    distance: int

    @property
    def cross_split(self) -> bool:
        return self.a.split != self.b.split

    @property
    def labels_differ(self) -> bool:
        return self.a.label != self.b.label


def near_duplicates(images: list[Listed], hashes: list[int], max_hamming: int) -> list[NearDuplicate]:
    """The near-duplicate pairs of the listed images, leaks and label conflicts first, then by distance."""
    pairs = [NearDuplicate(images[i], images[j], d) for i, j, d in near_pairs(hashes, max_hamming)]
    return sorted(pairs, key=lambda p: (not p.cross_split, not p.labels_differ, p.distance, p.a.where))
