"""The production gate: a challenger and the champion judged side by side on the reviewed production images.

`production.txt` in the dataset folder lists reviewed images that training never reads (`dataset
add-reviewed` holds back `review.holdout` of them). On those images the challenger must not be worse than
the champion under an exact McNemar test (paired: the same images), must not cost more per 1,000 items
under the cost matrix, and must not lose more than `register.max_recall_drop` of recall on any class with
at least `MIN_CLASS_IMAGES` images.

numpy and scipy only: register uses it without loading torch.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.core.errors import InputError
from components.model.calibration import UNSURE, accepted

MIN_CLASS_IMAGES = 20  # a class's recall is judged only with at least this many production images
EPSILON = 1e-9


def mcnemar_worse(champion_right: np.ndarray, challenger_right: np.ndarray) -> float:
    """Exact one-sided McNemar test on paired answers: the p-value of the challenger being wrong on at least
    this many of the images where exactly one of the two is right, if neither were better."""
    from scipy.stats import binomtest

    worse = int((champion_right & ~challenger_right).sum())
    better = int((~champion_right & challenger_right).sum())
    if worse + better == 0:
        return 1.0
    return float(binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)


def default_costs(labels: list[str], unsure_cost: float) -> np.ndarray:
    """[classes, classes + 1]: 0 for a right answer, 1 for every error, `unsure_cost` in the last (unsure) column."""
    k = len(labels)
    costs = np.ones((k, k + 1)) - np.eye(k, k + 1)
    costs[:, k] = unsure_cost
    return costs


def read_cost_matrix(path: str | Path, labels: list[str]) -> np.ndarray:
    """A cost matrix CSV: a header row `true,<class>,...,unsure`, then one row per true class with its costs
    (non-negative numbers). Columns and rows may come in any order; every class and `unsure` must be there."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the cost matrix ({exc.strerror}); fix register.cost_matrix") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason}); save the cost matrix as UTF-8") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise InputError(f"{path}: not a CSV file ({exc}); fix the cost matrix") from None
    if not rows:
        raise InputError(f"{path}: empty; write a header `true,{','.join(labels)},{UNSURE}` and a row per class")
    columns = [c.strip() for c in rows[0][1:]]
    wanted = [*labels, UNSURE]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise InputError(f"{path}:1: no column for {', '.join(map(repr, missing))}; the header needs {wanted}")
    costs = np.full((len(labels), len(labels) + 1), np.nan)
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        name = row[0].strip()
        if name not in labels:
            raise InputError(f"{path}:{line}: {name!r} is not a class; the rows are the true classes {labels}")
        if len(row) != len(rows[0]):
            raise InputError(f"{path}:{line}: {len(row)} fields, the header has {len(rows[0])}; fix that line")
        for column, value in zip(columns, row[1:], strict=True):
            if column in wanted:
                costs[labels.index(name), wanted.index(column)] = _cost(path, line, column, value)
    absent = [labels[i] for i in range(len(labels)) if np.isnan(costs[i]).any()]
    if absent:
        raise InputError(f"{path}: no row for {', '.join(map(repr, absent))}; add a row per true class")
    return costs


def _cost(path: Path, line: int, column: str, value: str) -> float:
    try:
        cost = float(value)
    except ValueError:
        cost = float("nan")
    if not np.isfinite(cost) or cost < 0:
        raise InputError(f"{path}:{line}: cost {value!r} in column {column!r} is not a number >= 0; fix it")
    return cost


@dataclass(frozen=True)
class Scores:
    """One model on the production images: top-1, expected cost per 1,000 items and recall per class."""

    top1: float
    cost_per_1000: float
    recall: dict[str, float]


def scores(
    probabilities: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, costs: np.ndarray, labels: list[str]
) -> Scores:
    """A model's figures from its (calibrated) probabilities and its own unsure thresholds."""
    predicted = probabilities.argmax(axis=1)
    decided = np.where(accepted(probabilities, thresholds), predicted, len(labels))  # the last column: unsure
    right = predicted == targets
    recall = {name: float(right[targets == c].mean()) for c, name in enumerate(labels) if (targets == c).any()}
    return Scores(float(right.mean()), float(costs[targets, decided].mean() * 1000), recall)


@dataclass(frozen=True)
class ProductionVerdict:
    """What the production images say of promoting the challenger: promote, refuse, or skipped (too few
    images, no champion, other classes); the figures of both models when they were compared."""

    images: int
    decision: str  # promote, refuse or skipped
    reasons: list[str]
    champion: Scores | None = None
    challenger: Scores | None = None
    p_value: float | None = None

    @property
    def refused(self) -> bool:
        return self.decision == "refuse"

    def text(self) -> str:
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        c, n = self.champion, self.challenger
        if c is None or n is None:
            return f"production gate skipped on {self.images} production images{why}"
        return (
            f"on {self.images} production images: top-1 {n.top1:.4f} vs champion {c.top1:.4f}, cost per 1,000 "
            f"{n.cost_per_1000:.1f} vs {c.cost_per_1000:.1f}, McNemar p {self.p_value:.3g}: {self.decision}{why}"
        )


def judge(
    champion: np.ndarray,
    challenger: np.ndarray,
    targets: np.ndarray,
    thresholds: tuple[np.ndarray, np.ndarray],
    costs: np.ndarray,
    labels: list[str],
    settings: Any,
) -> ProductionVerdict:
    """Champion and challenger probabilities on the same production images; `thresholds`: each one's own
    unsure thresholds; `settings`: register.alpha and register.max_recall_drop."""
    old = scores(champion, targets, thresholds[0], costs, labels)
    new = scores(challenger, targets, thresholds[1], costs, labels)
    p = mcnemar_worse(champion.argmax(1) == targets, challenger.argmax(1) == targets)
    reasons = []
    if p < settings.alpha:
        reasons.append(f"worse under the paired test (McNemar p {p:.3g} < register.alpha {settings.alpha:g})")
    if new.cost_per_1000 > old.cost_per_1000 + EPSILON:
        reasons.append(f"costs more ({new.cost_per_1000:.1f} vs {old.cost_per_1000:.1f} per 1,000 items)")
    for c, name in enumerate(labels):
        drop = old.recall.get(name, 0.0) - new.recall.get(name, 0.0)
        if int((targets == c).sum()) >= MIN_CLASS_IMAGES and drop > settings.max_recall_drop + EPSILON:
            reasons.append(f"{name} recall drops {drop:.3f} (register.max_recall_drop {settings.max_recall_drop:g})")
    return ProductionVerdict(len(targets), "refuse" if reasons else "promote", reasons, old, new, p)
