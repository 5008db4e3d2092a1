"""The calibration statistics against values worked out by hand, and on synthetic models of known temperature."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.model.calibration import (
    UNSURE,
    Calibration,
    calibrate,
    class_thresholds,
    decisions,
    fit_temperature,
    halves,
    recorded_calibration,
    reliability,
    risk_coverage,
    softmax,
)


def rows(*top: tuple[int, float], classes: int = 2) -> np.ndarray:
    """Probability rows whose top class and confidence are given (the rest spread evenly)."""
    out = np.zeros((len(top), classes))
    for i, (c, p) in enumerate(top):
        out[i] = (1 - p) / (classes - 1)
        out[i, c] = p
    return out


def synthetic(temperature: float, n: int = 20_000, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): T is the true temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, k))
    p = softmax(logits, temperature)
    targets = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, targets


def test_ece_by_hand() -> None:
    # Two images at 0.9 (one right: accuracy 0.5, gap 0.4) and two at 0.6 (both right: gap 0.4): ECE 0.4.
    probabilities = rows((0, 0.9), (0, 0.9), (1, 0.6), (1, 0.6))
    bins = reliability(probabilities, np.array([0, 1, 1, 1]))
    assert bins.ece == pytest.approx(0.4)
    assert bins.counts.sum() == 4 and bins.counts[13] == 2 and bins.counts[8] == 2  # (0.8667, 0.9333] and (0.5333, 0.6]
    assert bins.accuracy[13] == 0.5 and bins.confidence[8] == pytest.approx(0.6)
    assert reliability(rows((0, 0.9)), np.array([0])).ece == pytest.approx(0.1)
    assert reliability(np.empty((0, 2)), np.empty(0, int)).ece == 0.0


def test_the_temperature_of_a_known_model_is_found_and_never_changes_the_class() -> None:
    for true_t in (0.5, 2.0):
        logits, targets = synthetic(true_t)
        assert fit_temperature(logits, targets) == pytest.approx(true_t, rel=0.05)
    logits, _ = synthetic(1.0, n=100)
    assert (softmax(logits, 7.0).argmax(1) == logits.argmax(1)).all()
    assert np.isfinite(softmax(np.array([[1e4, -1e4]]), 0.05)).all()


def test_an_overconfident_model_is_calibrated_on_held_out_halves() -> None:
    logits, targets = synthetic(3.0, n=4000)  # the model's logits are 3 times too sharp
    cal = calibrate(logits, targets, [f"c{i}" for i in range(5)], 0.9)
    assert cal.temperature == pytest.approx(3.0, rel=0.1)
    assert cal.ece_before > 0.1 and cal.ece_after < 0.03
    off = calibrate(logits, targets, [f"c{i}" for i in range(5)], 0.9, fit=False)
    assert off.temperature == 1.0 and off.ece_after == off.ece_before


def test_thresholds_by_hand() -> None:
    # Class 0 at 0.99 right, 0.9 right, 0.8 wrong, 0.7 right: precisions 1, 1, 2/3, 3/4 going down.
    probabilities = rows((0, 0.99), (0, 0.9), (0, 0.8), (0, 0.7), (1, 0.95), (1, 0.6))
    targets = np.array([0, 0, 1, 0, 0, 1])  # class 1's surest answer is wrong: 0/1, then 1/2
    assert class_thresholds(probabilities, targets, 0.75).tolist() == [0.7, 1.0]
    assert class_thresholds(probabilities, targets, 0.9).tolist() == [0.9, 1.0]
    assert class_thresholds(probabilities, targets, 0.5).tolist() == [0.7, 0.6]
    # Equal confidences are accepted or refused together: half right at 0.8 is not 100% at 0.8.
    tied = rows((0, 0.8), (0, 0.8))
    assert class_thresholds(tied, np.array([0, 1]), 1.0).tolist() == [1.0, 1.0]
    assert class_thresholds(tied, np.array([0, 1]), 0.5).tolist() == [0.8, 1.0]


def test_decisions_and_risk_coverage_by_hand() -> None:
    probabilities = rows((0, 0.99), (0, 0.8), (1, 0.95), (1, 0.6))
    thresholds = np.array([0.9, 0.7])
    assert decisions(probabilities, thresholds, ["glass", "paper"]) == ["glass", UNSURE, "paper", UNSURE]
    rc = risk_coverage(probabilities, np.array([0, 1, 0, 1]), thresholds)
    assert (rc.coverage, rc.accepted_error, rc.overall_error) == (0.5, 0.5, 0.5)


def test_halves_are_seeded_disjoint_complete_and_stratified() -> None:
    targets = np.array([0] * 5 + [1] * 3 + [2] * 3)
    a, b = halves(targets, seed=0)
    assert sorted([*a, *b]) == list(range(11)) and abs(len(a) - len(b)) <= 1
    for c, size in ((0, 5), (1, 3), (2, 3)):  # each class split as evenly as its size allows
        assert sorted(((targets[a] == c).sum(), (targets[b] == c).sum())) == [size // 2, size - size // 2]
    assert [x.tolist() for x in halves(targets, seed=0)] == [a.tolist(), b.tolist()]
    assert [x.tolist() for x in halves(targets, seed=1)] != [a.tolist(), b.tolist()]
    assert [x.tolist() for x in halves(np.array([], dtype=int), seed=0)] == [[], []]


def test_the_thresholds_reach_the_target_on_images_they_were_not_chosen_on() -> None:
    logits, targets = synthetic(1.0, n=6000, seed=1)
    cal = calibrate(logits, targets, [f"c{i}" for i in range(5)], 0.95)
    assert cal.accepted_error < 0.07 and cal.accepted_error < cal.overall_error / 2 and cal.coverage > 0.3


def test_a_record_is_used_only_for_its_checkpoint_and_settings(tmp_path) -> None:
    cal = Calibration(1.7, 0.1, 0.02, 0.95, {"a": 0.8, "b": 0.9}, 0.9, 0.03, 0.1)
    (tmp_path / "evaluate_result.json").write_text(json.dumps({"weight_digest": "abc", **cal.record()}))
    assert recorded_calibration(tmp_path, "abc", 0.95, True) == cal
    assert recorded_calibration(tmp_path, "other", 0.95, True) is None
    assert recorded_calibration(tmp_path, "abc", 0.9, True) is None
    assert recorded_calibration(tmp_path, "abc", 0.95, False) is None  # fitted, but calibration is now off
    assert recorded_calibration(tmp_path / "missing", "abc", 0.95, True) is None
