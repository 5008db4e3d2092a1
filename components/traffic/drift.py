"""Drift statistics: does a window of live traffic look like the reference (the val set of the served version)?

Pure functions over numbers, so they are tested on synthetic inputs with known answers. Every test gives a
p-value; the monitor calls it drift when a p-value falls below its share of the family-wise level
(`monitor.alpha` divided by the number of tests, Bonferroni), so that a window of ordinary traffic raises
a false alarm with probability at most `monitor.alpha`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PSEUDO_COUNT = 0.5  # a class the reference never predicted still has a small expected share


@dataclass(frozen=True)
class Finding:
    """One check of a window: its statistic, p-value, the level it is held to and the verdict."""

    check: str
    statistic: float
    p_value: float
    threshold: float
    drift: bool
    detail: str


def class_shares(predicted: Sequence[int], classes: int) -> np.ndarray:
    """The share of each class among predicted class indices (zeros when there are none)."""
    counts = np.bincount(np.asarray(predicted, dtype=int), minlength=classes)
    return counts / max(int(counts.sum()), 1)


def class_mix(live: Sequence[int], reference: Sequence[int], classes: int) -> tuple[float, float]:
    """Chi-square goodness of fit of the live predicted-class counts against the reference's class shares."""
    from scipy.stats import chisquare

    observed = np.bincount(np.asarray(live, dtype=int), minlength=classes).astype(float)
    shares = np.bincount(np.asarray(reference, dtype=int), minlength=classes) + PSEUDO_COUNT
    expected = shares / shares.sum() * observed.sum()
    statistic, p_value = chisquare(observed, expected)
    return float(statistic), float(p_value)


def two_sample(live: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: the largest gap between the two empirical distributions, and its p-value."""
    from scipy.stats import ks_2samp

    if len(live) == 0 or len(reference) == 0:
        return 0.0, 1.0
    result = ks_2samp(np.asarray(live, dtype=float), np.asarray(reference, dtype=float))
    return float(result.statistic), float(result.pvalue)


def share_above(hits: int, n: int, reference_share: float) -> tuple[float, float]:
    """A one-sided binomial test: is the live share hits/n above the reference's share?"""
    from scipy.stats import binomtest

    if n == 0:
        return 0.0, 1.0
    expected = min(max(reference_share, 1 / (2 * n)), 1.0)  # a share of 0 in the reference is not a certainty
    return hits / n, float(binomtest(hits, n, expected, alternative="greater").pvalue)


MMD_MAX_SAMPLES = 1000  # per side: a larger window is subsampled (seeded), which bounds the kernel matrix


def mmd(live: np.ndarray, reference: np.ndarray, permutations: int, seed: int = 0) -> tuple[float, float]:
    """Maximum mean discrepancy between two samples of embeddings [n, dim], and its permutation p-value.

    A Gaussian kernel with the median heuristic (its width the median squared distance among the pooled
    points); the statistic is the biased estimate of MMD squared, and the p-value the share of random
    relabellings of the pooled points with a statistic at least as large ((count + 1) / (permutations + 1), so
    it is never 0 and never below 1 / (permutations + 1)).
    """
    rng = np.random.default_rng(seed)
    sides = [
        x if len(x) <= MMD_MAX_SAMPLES else x[rng.choice(len(x), MMD_MAX_SAMPLES, replace=False)]
        for x in (live, reference)
    ]
    if min(len(x) for x in sides) < 2:
        return 0.0, 1.0
    pooled = np.vstack(sides).astype(np.float64)
    n, total = len(sides[0]), len(pooled)
    norms = (pooled**2).sum(1)
    squared = np.clip(norms[:, None] + norms[None, :] - 2 * pooled @ pooled.T, 0, None)
    width = float(np.median(squared[np.triu_indices(total, 1)])) or 1.0
    kernel = np.exp(-squared / width)
    # With weights 1/n on one side and -1/m on the other, w' K w is the biased MMD squared of that split.
    weights = np.where(np.arange(total) < n, 1 / n, -1 / (total - n))
    observed = float(weights @ kernel @ weights)
    exceed = 0
    for start in range(0, permutations, 500):  # 500 relabellings per matrix product
        w = np.stack([rng.permutation(weights) for _ in range(min(500, permutations - start))], axis=1)
        exceed += int((((kernel @ w) * w).sum(0) >= observed - 1e-12).sum())
    return observed, (exceed + 1) / (permutations + 1)


def findings(tests: dict[str, tuple[float, float, str]], alpha: float) -> list[Finding]:
    """The verdict on each test (name -> statistic, p-value, detail) at the family-wise level `alpha`."""
    threshold = alpha / max(len(tests), 1)
    return [
        Finding(name, statistic, p_value, threshold, p_value < threshold, detail)
        for name, (statistic, p_value, detail) in tests.items()
    ]
