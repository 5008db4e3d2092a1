"""The production gate's statistics against values worked out by hand, and its cost matrix file."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from components.core.errors import InputError
from components.model.production import (
    MIN_CLASS_IMAGES,
    default_costs,
    judge,
    mcnemar_worse,
    read_cost_matrix,
    scores,
)

LABELS = ["glass", "metal", "paper"]
SETTINGS = SimpleNamespace(alpha=0.05, max_recall_drop=0.05)


def onehot(classes: list[int], confidence: float = 0.9) -> np.ndarray:
    out = np.full((len(classes), 3), (1 - confidence) / 2)
    out[np.arange(len(classes)), classes] = confidence
    return out


def test_exact_mcnemar_by_hand() -> None:
    right = np.array([True] * 5 + [False] * 5)
    # The challenger is wrong on the 5 images the champion gets right, and right on none it gets wrong:
    # 5 of 5 discordant pairs against it, p = 0.5 ** 5.
    assert mcnemar_worse(right, np.zeros(10, bool)) == pytest.approx(0.03125)
    # 3 worse, 3 better: P(X >= 3 | 6, 0.5) = 42 / 64.
    champion = np.array([True] * 3 + [False] * 3)
    assert mcnemar_worse(champion, ~champion) == pytest.approx(42 / 64)
    assert mcnemar_worse(right, right) == 1.0  # no disagreement, no evidence
    assert mcnemar_worse(np.zeros(10, bool), right) == 1.0  # better everywhere it differs


def test_scores_by_hand() -> None:
    targets = np.array([0, 0, 1, 2])
    probabilities = onehot([0, 1, 1, 2])
    probabilities[3] = [0.2, 0.2, 0.6]  # paper, below its threshold: unsure
    costs = default_costs(LABELS, 0.25)
    assert costs.tolist() == [[0, 1, 1, 0.25], [1, 0, 1, 0.25], [1, 1, 0, 0.25]]
    got = scores(probabilities, targets, np.array([0.5, 0.5, 0.7]), costs, LABELS)
    # One error (glass answered metal: 1) and one unsure (0.25) in four images: 312.5 per 1,000.
    assert got.top1 == 0.75 and got.cost_per_1000 == pytest.approx(312.5)
    assert got.recall == {"glass": 0.5, "metal": 1.0, "paper": 1.0}


def test_the_gate_refuses_with_each_reason_and_promotes_otherwise() -> None:
    n = MIN_CLASS_IMAGES
    targets = np.array([0] * n + [1] * n + [2] * n)
    champion = onehot(targets.tolist())
    costs = default_costs(LABELS, 0.2)
    zero = np.zeros(3)
    same = judge(champion, champion, targets, (zero, zero), costs, LABELS, SETTINGS)
    assert same.decision == "promote" and same.reasons == [] and same.p_value == 1.0
    worse = targets.copy()
    worse[:6] = 1  # six glass images now answered metal: 6 of 6 discordant pairs against it
    verdict = judge(champion, onehot(worse.tolist()), targets, (zero, zero), costs, LABELS, SETTINGS)
    assert verdict.refused and verdict.p_value == pytest.approx(0.5**6)
    assert any("McNemar" in r for r in verdict.reasons) and any("costs more" in r for r in verdict.reasons)
    assert any(r.startswith("glass recall drops 0.300") for r in verdict.reasons)
    # The same answers, but the challenger sends everything to the manual sorter: it costs more.
    unsure = judge(champion, champion, targets, (zero, np.ones(3)), costs, LABELS, SETTINGS)
    assert unsure.refused and unsure.reasons == ["costs more (200.0 vs 0.0 per 1,000 items)"]


def test_a_recall_drop_counts_only_for_classes_with_enough_images() -> None:
    targets = np.array([0] * 5 + [1] * MIN_CLASS_IMAGES)
    worse = targets.copy()
    worse[0] = 1
    costs = np.zeros((3, 4))  # errors cost nothing here, so only the recall rule can refuse
    lenient = SimpleNamespace(alpha=0.0, max_recall_drop=0.05)
    pair = (np.zeros(3), np.zeros(3))
    verdict = judge(onehot(targets.tolist()), onehot(worse.tolist()), targets, pair, costs, LABELS, lenient)
    assert verdict.decision == "promote"  # glass lost 0.2 of recall, on 5 images only


def test_cost_matrix_file(tmp_path) -> None:
    path = tmp_path / "costs.csv"
    path.write_text("true,unsure,paper,metal,glass\nglass,0.1,10,2,0\nmetal,0.1,1,0,1\n\npaper,0.3,0,1,1\n")
    costs = read_cost_matrix(path, LABELS)
    assert costs.tolist() == [[0, 2, 10, 0.1], [1, 0, 1, 0.1], [1, 1, 0, 0.3]]
    cases = {
        "true,glass,metal,paper\nglass,0,1,1\n": r"costs.csv:1: no column for 'unsure'",
        "true,glass,metal,paper,unsure\nglass,0,1,1,x\n": r"costs.csv:2: cost 'x' in column 'unsure' is not a number",
        "true,glass,metal,paper,unsure\nglass,0,-1,1,0\n": r"costs.csv:2: cost '-1' in column 'metal'",
        "true,glass,metal,paper,unsure\nplastic,0,1,1,0\n": r"costs.csv:2: 'plastic' is not a class",
        "true,glass,metal,paper,unsure\nglass,0,1,1\n": r"costs.csv:2: 4 fields, the header has 5",
        "true,glass,metal,paper,unsure\nglass,0,1,1,0\n": r"costs.csv: no row for 'metal', 'paper'",
        "": r"costs.csv: empty",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            read_cost_matrix(path, LABELS)
    path.write_bytes(b"true,glass\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_cost_matrix(path, LABELS)
    with pytest.raises(InputError, match="cannot read the cost matrix"):
        read_cost_matrix(tmp_path / "missing.csv", LABELS)
