"""Calibration and the unsure answer on TrashNet (../shared/data): ECE before and after the temperature, and what
the per-class thresholds do at several target precisions, all cross-fitted on val halves by `sortflow evaluate`.
Side by side, the same recipe with sortflow's default label smoothing (0.1), which params.trashnet.yaml turns off.

Uses the EfficientNet-Lite0 checkpoint of `python -m bench.bench_train accuracy` (params.trashnet.yaml),
training it and the smoothed one first when bench/out has none (about 15 minutes each on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench.bench_train import OUT, RECIPE, SORTFLOW, dataset, sortflow_train
from bench.report import Result, record

TARGETS = ("0.9", "0.95", "0.98")
DRAWS = 500
SMOOTHED = ("lite0-smoothing", "train.label_smoothing=0.1")  # run name, and what it changes in the recipe


def ece_noise_floor(predictions: Path, size: int, classes: int) -> float:
    """The mean 15-bin ECE of a perfectly calibrated model on `size` images: each image right with the
    probability of its calibrated confidence (predictions.csv's score), on random subsets of that size (drawn
    with replacement where `size` is more than there are predictions)."""
    import csv

    import numpy as np

    from components.model.calibration import reliability

    scores = np.array([float(row["score"]) for row in csv.DictReader(predictions.open())])
    rng = np.random.default_rng(0)
    found = []
    for _ in range(DRAWS):
        conf = scores[rng.choice(len(scores), size, replace=size > len(scores))]
        rows = np.repeat(((1 - conf) / (classes - 1))[:, None], classes, axis=1)
        rows[:, 0] = conf
        right = rng.random(size) < conf
        found.append(reliability(rows, np.where(right, 0, 1)).ece)
    return float(np.mean(found))


def size_for_floor(predictions: Path, classes: int, ece: float = 0.02, step: int = 250) -> int:
    """The fewest images, in steps of `step`, on which that perfectly calibrated model shows a mean ECE of at
    most `ece`: how large a val half must be before an ECE this small can be measured at all."""
    size = step
    while ece_noise_floor(predictions, size, classes) > ece:
        size += step
    return size


def checkpoint(root: Path, name: str = "lite0", *overrides: str) -> Path:
    """best.pt of the TrashNet recipe (with `overrides`), trained when missing."""
    best = OUT / "runs" / name / "best.pt"
    if not best.is_file():
        sortflow_train(root, name, *overrides, params_file=RECIPE)
    return best


def evaluate(root: Path, best: Path, target: str, name: str = "") -> dict:
    """`sortflow evaluate` at one target precision; its evaluate_result.json."""
    out = OUT / "decisions" / (f"{name}-{target}" if name else target)
    settings = {
        "dataset.dir": root,
        "dataset.output": OUT / "check",
        "evaluate.weight_path": best,
        "evaluate.output": out,
        "evaluate.target_precision": target,
        "mlflow.tracking_uri": f"sqlite:///{OUT / 'mlflow.db'}",
    }
    command = [SORTFLOW, "evaluate", "--params", str(RECIPE)]
    for key, value in settings.items():
        command += ["-o", f"{key}={value}"]
    subprocess.run(command, check=True, cwd=OUT)
    return json.loads((out / "evaluate_result.json").read_text())


def error_auroc(predictions: Path) -> float:
    """How well the confidence ranks the model's errors below its right answers (predictions.csv): the AUROC of
    telling a wrong prediction from a right one by the confidence alone (1: every error less sure)."""
    import csv

    from sklearn.metrics import roc_auc_score

    rows = list(csv.DictReader(predictions.open()))
    wrong = [row["actual"] != row["predicted"] for row in rows]
    return float(roc_auc_score(wrong, [-float(row["score"]) for row in rows]))


def error_ratio(reject: dict) -> float:
    """The error of the answered as a share of the error of all (0 when the model makes none)."""
    return reject["accepted_error"] / reject["overall_error"] if reject["overall_error"] else 0.0


def reject_row(label: str, result: dict) -> list[str]:
    """A table row: what the thresholds of one evaluate_result.json do."""
    r = result["reject"]
    errors = f"{r['accepted_error']:.2%}", f"{r['overall_error']:.2%}"
    return [label, f"{r['coverage']:.1%}", *errors, f"{error_ratio(r):.3f}"]


def smoothing_note(recipe: dict, smoothed: dict, smoothed_auroc: float, auroc: float) -> str:
    """The recipe against the same run with label smoothing 0.1, at target precision 0.95."""
    cal, cal_s = recipe["calibration"], smoothed["calibration"]
    top1, top1_s = recipe["metrics"]["val.top1"], smoothed["metrics"]["val.top1"]
    return (
        f"The same recipe with label smoothing 0.1 (sortflow's default), trained in the same way: val top-1 "
        f"{top1_s:.4f} against {top1:.4f}; the confidence tells errors from right answers with "
        f"an AUROC of {smoothed_auroc:.3f} against {auroc:.3f}; temperature {cal_s['temperature']:.3f} against "
        f"{cal['temperature']:.3f}; ECE {cal_s['ece_before']:.4f} before and {cal_s['ece_after']:.4f} after, against "
        f"{cal['ece_before']:.4f} and {cal['ece_after']:.4f}; at target precision 0.95 it answers "
        f"{smoothed['reject']['coverage']:.1%} with {smoothed['reject']['accepted_error']:.2%} error "
        f"(row 0.95 above: {recipe['reject']['coverage']:.1%}, {recipe['reject']['accepted_error']:.2%}). "
        "Smoothed targets make a model less sure of its easy answers, so its confidence ranks its errors worse."
    )


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    OUT.mkdir(parents=True, exist_ok=True)
    root = dataset()
    best = checkpoint(root)
    results = {target: evaluate(root, best, target) for target in TARGETS}
    smoothed = evaluate(root, checkpoint(root, *SMOOTHED), "0.95", SMOOTHED[0])
    cal = results["0.95"]["calibration"]
    half = results["0.95"]["num_samples"] // 2
    predictions, classes = OUT / "decisions" / "0.95" / "predictions.csv", len(results["0.95"]["per_class"])
    floor, needed = ece_noise_floor(predictions, half, classes), size_for_floor(predictions, classes)
    aurocs = [error_auroc(OUT / "decisions" / name / "predictions.csv") for name in ("0.95", f"{SMOOTHED[0]}-0.95")]
    rows = [reject_row(target, result) for target, result in results.items()]
    r95 = results["0.95"]["reject"]
    ece_met = cal["ece_after"] <= 0.02 and cal["ece_after"] <= cal["ece_before"] / 2
    reject_met = error_ratio(r95) <= 0.5 and r95["coverage"] >= 0.85
    record(
        Result(
            "decisions",
            "Calibration and the unsure answer on TrashNet",
            "EfficientNet-Lite0 fine-tuned with params.trashnet.yaml (the checkpoint of the accuracy benchmark), "
            f"evaluated on TrashNet's 506 val images. Temperature {cal['temperature']:.3f}. Top-label ECE with 15 "
            "equal-width bins, and the per-class thresholds' coverage and errors, are cross-fitted: fitted on one "
            "half of val, measured on the other, both ways, averaged over 100 seeded splits stratified by class.",
            ["target precision", "coverage", "error of the answered", "error of all", "answered / all"],
            rows,
            [
                f"ECE {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after the temperature. Target: at most "
                f"0.02 and at most half of before: {'met' if ece_met else 'not met'}. For scale: a perfectly "
                f"calibrated model with these confidences would show a 15-bin ECE of {floor:.4f} on average on "
                f"{half} images (the size of a val half; {DRAWS} simulated draws), so this val set cannot tell a "
                "cross-fitted ECE below about that figure from sampling noise. That floor falls to 0.02 only at "
                f"about {needed:,} images per half, a val set of {2 * needed:,} (TrashNet has 2,527 photos in all).",
                "Target at precision 0.95: the error of the answered at most half the error of all, with coverage "
                f"of at least 85%: {'met' if reject_met else 'not met'} (the error of the answered is "
                f"{error_ratio(r95):.3f} of all, coverage {r95['coverage']:.1%}).",
                smoothing_note(results["0.95"], smoothed, aurocs[1], aurocs[0]),
            ],
        )
    )


if __name__ == "__main__":
    main()
