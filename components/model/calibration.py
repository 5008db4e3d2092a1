"""Calibrated confidence and the "unsure" route: a temperature fitted on val, top-label ECE, and one confidence
threshold per class that keeps the accepted predictions at a target precision.

Temperature scaling (Guo et al., 2017) divides the logits by one number T before the softmax: the predicted
class never changes, only how sure the model says it is. The thresholds are plain per-class thresholds on
the calibrated confidence, chosen on val: an empirical precision target, not a finite-sample guarantee
(conformal methods give one for coverage of a prediction set, not for the precision of a single answer).
The figures reported for both are cross-fitted: fitted on one half of val, measured on the other, both ways,
averaged over several seeded splits stratified by class, so they say what to expect on images the fit has
not seen.

numpy and scipy only: register and predict read the results without loading torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EVALUATE_FILE = "evaluate_result.json"  # where evaluate records the calibration that export folds in
BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram
UNSURE = "unsure"  # the decision when the confidence is below its class's threshold
REPEATS = 100  # seeded splits of val into halves for the cross-fitted figures: with 10, a few hundred val images
# gave coverages half a point apart from one set of seeds to the next; with 100, a tenth of a point


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of logits divided by `temperature` (float64, stable for large logits)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(targets)), targets]))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature (between 0.05 and 20) that minimises the negative log-likelihood of the targets."""
    from scipy.optimize import minimize_scalar

    if len(targets) == 0:
        return 1.0
    found = minimize_scalar(
        lambda log_t: _nll(logits, targets, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(found.x))


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: the images in it, their mean confidence and their accuracy (NaN where empty)."""

    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Top-label expected calibration error: the count-weighted mean gap between accuracy and confidence."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        used = self.counts > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float((self.counts[used] * gaps).sum() / total)


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin the top-label confidences into `bins` equal-width bins over (0, 1]: (0, 1/b], (1/b, 2/b], ..."""
    confidence = probabilities.max(axis=1) if len(targets) else np.empty(0)
    correct = (probabilities.argmax(axis=1) == targets) if len(targets) else np.empty(0, bool)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / counts
    return Reliability(counts, mean_conf, accuracy)


def class_thresholds(probabilities: np.ndarray, targets: np.ndarray, target_precision: float) -> np.ndarray:
    """One confidence threshold per class: the lowest at which the predictions of that class with at least
    that confidence reach `target_precision` on these images (most coverage at the target). A class that
    never reaches it, or is never predicted, gets 1.0: only a certain answer is accepted."""
    k = probabilities.shape[1]
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    thresholds = np.ones(k)
    for c in range(k):
        mine = predicted == c
        order = np.argsort(-confidence[mine], kind="stable")
        conf, right = confidence[mine][order], (targets[mine] == c)[order]
        precision = np.cumsum(right) / np.arange(1, len(right) + 1)
        # The lowest confidence whose whole prefix (itself and everything surer) reaches the target; ties
        # in confidence are accepted or refused together, so only the last of each tie is a candidate.
        last_of_tie = np.append(conf[1:] != conf[:-1], True)
        ok = np.flatnonzero((precision >= target_precision) & last_of_tie)
        if len(ok):
            thresholds[c] = conf[ok[-1]]
    return thresholds


def accepted(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Which predictions are accepted: their confidence reaches their predicted class's threshold."""
    return probabilities.max(axis=1) >= thresholds[probabilities.argmax(axis=1)]


def decisions(probabilities: np.ndarray, thresholds: np.ndarray, labels: list[str]) -> list[str]:
    """Each row's class name, or `unsure` where its confidence is below its class's threshold."""
    keep = accepted(probabilities, thresholds)
    return [labels[c] if ok else UNSURE for c, ok in zip(probabilities.argmax(axis=1).tolist(), keep, strict=True)]


@dataclass(frozen=True)
class RiskCoverage:
    """What the thresholds do on a set of images: the share accepted and the error among them and overall."""

    coverage: float
    accepted_error: float
    overall_error: float


def risk_coverage(probabilities: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> RiskCoverage:
    """Coverage, error of the accepted predictions (0 when none is) and overall error of these predictions."""
    if len(targets) == 0:
        return RiskCoverage(0.0, 0.0, 0.0)
    wrong = probabilities.argmax(axis=1) != targets
    keep = accepted(probabilities, thresholds)
    return RiskCoverage(float(keep.mean()), float(wrong[keep].mean()) if keep.any() else 0.0, float(wrong.mean()))


@dataclass(frozen=True)
class Calibration:
    """What evaluate fits on val and the release carries: the temperature and the per-class thresholds, with
    their cross-fitted figures."""

    temperature: float
    ece_before: float
    ece_after: float
    target_precision: float
    thresholds: dict[str, float]
    coverage: float
    accepted_error: float
    overall_error: float

    def threshold_array(self, labels: list[str]) -> np.ndarray:
        """The thresholds in the order of `labels`."""
        return np.array([self.thresholds[name] for name in labels])

    def record(self) -> dict[str, Any]:
        """The `calibration` and `reject` sections of evaluate_result.json and export_result.json."""
        return {
            "calibration": {
                "temperature": self.temperature,
                "ece_before": self.ece_before,
                "ece_after": self.ece_after,
            },
            "reject": {
                "target_precision": self.target_precision,
                "thresholds": self.thresholds,
                "coverage": self.coverage,
                "accepted_error": self.accepted_error,
                "overall_error": self.overall_error,
            },
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Calibration:
        """The calibration that `record()` wrote."""
        cal, reject = record["calibration"], record["reject"]
        return cls(
            temperature=float(cal["temperature"]),
            ece_before=float(cal["ece_before"]),
            ece_after=float(cal["ece_after"]),
            target_precision=float(reject["target_precision"]),
            thresholds={str(k): float(v) for k, v in reject["thresholds"].items()},
            coverage=float(reject["coverage"]),
            accepted_error=float(reject["accepted_error"]),
            overall_error=float(reject["overall_error"]),
        )


def halves(targets: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of the images into two halves stratified by class (as scikit-learn's StratifiedKFold),
    so that each class's thresholds are fitted and measured on half of its images; the odd image of a class
    goes to the halves in turn, keeping them within one image of each other."""
    order = np.lexsort((np.random.default_rng(seed).random(len(targets)), targets))  # by class, shuffled within
    return np.sort(order[::2]), np.sort(order[1::2])


def calibrate(
    logits: np.ndarray, targets: np.ndarray, labels: list[str], target_precision: float, fit: bool = True
) -> Calibration:
    """Fit the temperature (1 when `fit` is off) and the thresholds on all of val, and measure both
    cross-fitted on its halves: fit on one, measure on the other, both ways, averaged over REPEATS seeded
    splits, since which images land in which half moves a single split's figures by a point or more."""
    figures = []
    for seed in range(REPEATS):
        split = halves(targets, seed)
        for train, test in (split, split[::-1]):
            t = fit_temperature(logits[train], targets[train]) if fit else 1.0
            before, after = softmax(logits[test]), softmax(logits[test], t)
            chosen = class_thresholds(softmax(logits[train], t), targets[train], target_precision)
            rc = risk_coverage(after, targets[test], chosen)
            ece = (reliability(before, targets[test]).ece, reliability(after, targets[test]).ece)
            figures.append((*ece, rc.coverage, rc.accepted_error, rc.overall_error))
    mean = np.mean(figures, axis=0)
    temperature = fit_temperature(logits, targets) if fit else 1.0
    thresholds = class_thresholds(softmax(logits, temperature), targets, target_precision)
    return Calibration(
        temperature=temperature,
        ece_before=float(mean[0]),
        ece_after=float(mean[1]),
        target_precision=target_precision,
        thresholds={name: float(v) for name, v in zip(labels, thresholds, strict=True)},
        coverage=float(mean[2]),
        accepted_error=float(mean[3]),
        overall_error=float(mean[4]),
    )


def recorded_thresholds(record: dict[str, Any], labels: list[str]) -> list[float]:
    """A model's unsure thresholds in label order, from its export_result.json; empty for a version exported
    before calibration (every answer is accepted)."""
    found = record.get("reject", {}).get("thresholds", {})
    return [float(found[label]) for label in labels] if found else []


def recorded_calibration(
    evaluate_output: str | Path, weight_digest: str, target_precision: float, fit: bool
) -> Calibration | None:
    """The calibration that evaluate recorded for the checkpoint with this digest and these settings, or None
    (no record, another checkpoint, other settings, or a record from before calibration)."""
    path = Path(evaluate_output) / EVALUATE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        cal = Calibration.from_record(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    same = record.get("weight_digest") == weight_digest and cal.target_precision == target_precision
    return cal if same and (fit or cal.temperature == 1.0) else None
