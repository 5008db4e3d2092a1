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


def findings(tests: dict[str, tuple[float, float, str]], alpha: float) -> list[Finding]:
    """The verdict on each test (name -> statistic, p-value, detail) at the family-wise level `alpha`."""
    threshold = alpha / max(len(tests), 1)
    return [
        Finding(name, statistic, p_value, threshold, p_value < threshold, detail)
        for name, (statistic, p_value, detail) in tests.items()
    ]
