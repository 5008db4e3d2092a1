"""Calibration and the unsure answer on TrashNet (../shared/data): ECE before and after the temperature, and what
the per-class thresholds do at several target precisions, all cross-fitted on val halves by `sortflow evaluate`.

Uses the EfficientNet-Lite0 checkpoint of `python -m bench.bench_train accuracy` (params.trashnet.yaml),
training it first when bench/out has none (about 15 minutes on 2 cores).
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


def ece_noise_floor(predictions: Path, size: int, classes: int) -> float:
    """The mean 15-bin ECE of a perfectly calibrated model on `size` images: each image right with the
    probability of its calibrated confidence (predictions.csv's score), on random subsets of that size."""
    import csv

    import numpy as np

    from components.model.calibration import reliability

    scores = np.array([float(row["score"]) for row in csv.DictReader(predictions.open())])
    rng = np.random.default_rng(0)
    found = []
    for _ in range(DRAWS):
        conf = scores[rng.choice(len(scores), size, replace=False)]
        rows = np.repeat(((1 - conf) / (classes - 1))[:, None], classes, axis=1)
        rows[:, 0] = conf
        right = rng.random(size) < conf
        found.append(reliability(rows, np.where(right, 0, 1)).ece)
    return float(np.mean(found))


def checkpoint(root: Path) -> Path:
    """best.pt of the TrashNet recipe, trained when missing."""
    best = OUT / "runs" / "lite0" / "best.pt"
    if not best.is_file():
        sortflow_train(root, "lite0", params_file=RECIPE)
    return best


def evaluate(root: Path, best: Path, target: str) -> dict:
    """`sortflow evaluate` at one target precision; its evaluate_result.json."""
    out = OUT / "decisions" / target
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


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    OUT.mkdir(parents=True, exist_ok=True)
    root = dataset()
    best = checkpoint(root)
    results = {target: evaluate(root, best, target) for target in TARGETS}
    cal = results["0.95"]["calibration"]
    half = results["0.95"]["num_samples"] // 2
    floor = ece_noise_floor(OUT / "decisions" / "0.95" / "predictions.csv", half, len(results["0.95"]["per_class"]))
    rows = []
    for target, result in results.items():
        r = result["reject"]
        ratio = r["accepted_error"] / r["overall_error"] if r["overall_error"] else 0.0
        rows.append(
            [target, f"{r['coverage']:.1%}", f"{r['accepted_error']:.2%}", f"{r['overall_error']:.2%}", f"{ratio:.2f}"]
        )
    r95 = results["0.95"]["reject"]
    ece_met = cal["ece_after"] <= 0.02 and cal["ece_after"] <= cal["ece_before"] / 2
    reject_met = r95["accepted_error"] <= r95["overall_error"] / 2 and r95["coverage"] >= 0.85
    record(
        Result(
            "decisions",
            "Calibration and the unsure answer on TrashNet",
            "EfficientNet-Lite0 fine-tuned with params.trashnet.yaml (the checkpoint of the accuracy benchmark), "
            f"evaluated on TrashNet's 506 val images. Temperature {cal['temperature']:.3f}. Top-label ECE with 15 "
            "equal-width bins, and the per-class thresholds' coverage and errors, are cross-fitted: fitted on one "
            "half of val, measured on the other, both ways, averaged.",
            ["target precision", "coverage", "error of the answered", "error of all", "answered / all"],
            rows,
            [
                f"ECE {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after the temperature. Target: at most "
                f"0.02 and at most half of before: {'met' if ece_met else 'not met'}. For scale: a perfectly "
                f"calibrated model with these confidences would show a 15-bin ECE of {floor:.4f} on average on "
                f"{half} images (the size of a val half; {DRAWS} simulated draws), so a cross-fitted ECE this "
                "small cannot be told apart from sampling noise on this val set.",
                "Target at precision 0.95: the error of the answered at most half the error of all, with coverage "
                f"of at least 85%: {'met' if reject_met else 'not met'}.",
            ],
        )
    )


if __name__ == "__main__":
    main()
