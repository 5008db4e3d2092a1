"""evaluate: top-1/top-5, per-class precision/recall/F1 and the confusion matrix of a checkpoint on val.txt, and
the calibration that the release carries (a temperature and per-class thresholds for the "unsure" answer)."""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.core.config import Params
from components.core.fsutil import atomic_write_json, atomic_write_text, file_digest
from components.core.locks import locked
from components.core.plots import figure, save_png
from components.core.results import StepResult
from components.data.partition import prepared_dataset
from components.model.calibration import (
    BINS,
    EVALUATE_FILE,
    Calibration,
    Reliability,
    calibrate,
    decisions,
    reliability,
    softmax,
)
from components.model.checkpoints import check_classes, load_checkpoint, model_from_checkpoint, weights_path
from components.model.metrics import accuracy_at_k, class_metrics, predict_logits

log = logging.getLogger(__name__)

RESULT_FILE = EVALUATE_FILE
PREDICTIONS_FILE = "predictions.csv"
RELIABILITY_PNG = "reliability.png"
RISK_COVERAGE_PNG = "risk_coverage.png"


def _confusion_png(matrix: np.ndarray, names: list[str], path: Path) -> None:
    size = max(5, len(names) * 0.45)
    fig = figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 20:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    save_png(fig, path)


def _val_logits(root: Path, ckpt: dict[str, Any], params: Params) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """The val samples, the checkpoint's logits on them (evaluation transform) and their targets."""
    from torch.utils.data import DataLoader

    from components.data.loader import ClsImages, DataConfig, ImageStore, read_split, transform

    cfg = DataConfig(**ckpt["data_config"])
    samples = read_split(root, "val")
    store = ImageStore([s.path for s in samples], params.train.cache_mb * 1024 * 1024, 2 * cfg.image_size)
    dataset = ClsImages(store, [s.label for s in samples], transform(cfg, training=False))
    model = model_from_checkpoint(ckpt).to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=params.evaluate.batch_size)
    logits, targets = predict_logits(model, loader, torch.device("cpu"))
    return samples, logits.numpy(), targets.numpy()


def _per_class(classes: list[str], targets: np.ndarray, predicted: np.ndarray) -> tuple[list[dict], np.ndarray]:
    matrix, precision, recall, f1 = class_metrics(targets, predicted, len(classes))
    support = matrix.sum(1)
    rows = [
        {
            "class_id": i,
            "label_name": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]
    return rows, matrix


def _write_predictions(
    path: Path, root: Path, samples: list[Any], classes: list[str], probabilities: np.ndarray, decided: list[str]
) -> None:
    """One row per image, in the shape of DVC's confusion-matrix plot template and handy for error analysis:
    the calibrated confidence, and the decision (the class, or unsure)."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["path", "actual", "predicted", "score", "decision"])
    rows = zip(samples, probabilities.argmax(1).tolist(), probabilities.max(1).tolist(), decided, strict=True)
    for sample, guess, score, decision in rows:
        rel = Path(sample.path).relative_to(root).as_posix()
        writer.writerow([rel, classes[sample.label], classes[guess], f"{score:.4f}", decision])
    atomic_write_text(path, table.getvalue())


def _reliability_png(before: Reliability, after: Reliability, cal: Calibration, path: Path) -> None:
    """The reliability diagram: accuracy against confidence per bin, before and after the temperature."""
    fig = figure(6, 5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for bins, name, ece in (
        (before, "before", cal.ece_before),
        (after, f"after (T={cal.temperature:.2f})", cal.ece_after),
    ):
        used = bins.counts > 0
        ax.plot(bins.confidence[used], bins.accuracy[used], marker="o", label=f"{name}: ECE {ece:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"confidence ({BINS} equal-width bins)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on val (ECE cross-fitted on its halves)")
    ax.legend(loc="upper left")
    save_png(fig, path)


def _risk_coverage_png(probabilities: np.ndarray, targets: np.ndarray, cal: Calibration, path: Path) -> None:
    """Error of the accepted predictions against coverage, as one confidence threshold sweeps; the point of the
    per-class thresholds (cross-fitted)."""
    order = np.argsort(-probabilities.max(1), kind="stable")
    wrong = (probabilities.argmax(1) != targets)[order]
    kept = np.arange(1, len(wrong) + 1)
    fig = figure(6, 5)
    ax = fig.add_subplot()
    ax.plot(kept / max(len(wrong), 1), np.cumsum(wrong) / kept, label="one threshold for all classes (val)")
    ax.scatter(
        [cal.coverage],
        [cal.accepted_error],
        color="C3",
        zorder=3,
        label=f"per-class thresholds at precision {cal.target_precision:g} (cross-fitted)",
    )
    ax.axhline(cal.overall_error, color="grey", linestyle=":", label="error without an unsure answer")
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("error of the answered images")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    save_png(fig, path)


@dataclass(frozen=True)
class EvaluateResult(StepResult):
    model_name: str
    weight_path: str
    num_samples: int
    top1: float
    top5: float
    macro_f1: float
    calibration: Calibration
    report: str  # evaluate_result.json

    def text(self) -> str:
        c = self.calibration
        return (
            f"val.top1 {self.top1:.4f}  val.top5 {self.top5:.4f}  ({self.num_samples} images, {self.weight_path})\n"
            f"Calibration: temperature {c.temperature:.3f}, ECE {c.ece_before:.4f} -> {c.ece_after:.4f}\n"
            f"Unsure route at precision {c.target_precision:g}: coverage {c.coverage:.1%}, error of the answered "
            f"{c.accepted_error:.2%} (all: {c.overall_error:.2%})\n"
            f"Report: {self.report}"
        )


@locked("evaluate.output")
def evaluate(params: Params) -> EvaluateResult:
    """Evaluate the checkpoint `evaluate.weight_path` (empty: best.pt in train.output) on the val list.

    Reads the checkpoint and the val images of the prepared dataset (split.output, else dataset.dir).
    Writes under `evaluate.output`: evaluate_result.json (top-1/top-5, per-class metrics, macro F1, the
    calibration and the unsure route's thresholds), confusion_matrix.json and .png, reliability.png,
    risk_coverage.png and predictions.csv; logs them to the checkpoint's MLflow run (or a new run where
    the store lacks it). Raises SortflowError for a missing checkpoint or other classes.
    """
    from components.data.loader import read_classes

    weights = weights_path(params.evaluate.weight_path, params.train.output)
    ckpt = load_checkpoint(weights, "evaluate.weight_path")
    root = prepared_dataset(params, check=False)
    classes = read_classes(root)
    check_classes(ckpt, classes, weights, root / "label.txt", "evaluate it on its own dataset")
    began = time.perf_counter()
    samples, logits, targets = _val_logits(root, ckpt, params)
    e = params.evaluate
    cal = calibrate(logits, targets, classes, e.target_precision, fit=e.calibrate)
    per_class, matrix = _per_class(classes, targets, logits.argmax(1))
    top1, top5 = accuracy_at_k(logits, targets, 1), accuracy_at_k(logits, targets, 5)
    out = Path(e.output)
    result = {
        "done_flag": True,
        "metrics": {"val.top1": top1, "val.top5": top5},
        "weight_path": str(weights),
        "weight_digest": file_digest(weights),
        "model_name": ckpt["model_name"],
        "num_samples": len(targets),
        "seconds": round(time.perf_counter() - began, 2),
        "per_class": per_class,
        "macro_f1": float(np.mean([c["f1"] for c in per_class])),
        **cal.record(),
        "confusion_matrix": "confusion_matrix.json",
        "predictions": PREDICTIONS_FILE,
    }
    calibrated = softmax(logits, cal.temperature)
    atomic_write_json(out / "confusion_matrix.json", {"labels": classes, "matrix": matrix.tolist()})
    decided = decisions(calibrated, cal.threshold_array(classes), classes)
    _write_predictions(out / PREDICTIONS_FILE, root, samples, classes, calibrated, decided)
    _confusion_png(matrix, classes, out / "confusion_matrix.png")
    before, after = reliability(softmax(logits), targets), reliability(calibrated, targets)
    _reliability_png(before, after, cal, out / RELIABILITY_PNG)
    _risk_coverage_png(calibrated, targets, cal, out / RISK_COVERAGE_PNG)
    atomic_write_json(out / RESULT_FILE, result)
    log.info("Evaluated %s on %d val images: top-1 %.4f, top-5 %.4f", weights, len(targets), top1, top5)
    _log_to_mlflow(params, ckpt.get("mlflow_run_id"), result, out, root)
    return EvaluateResult(
        ckpt["model_name"], str(weights), len(targets), top1, top5, result["macro_f1"], cal, str(out / RESULT_FILE)
    )


def _log_to_mlflow(params: Params, run_id: str | None, result: dict[str, Any], out: Path, root: Path) -> None:
    """Log to the training run of the checkpoint, or to a new run when the store does not have it."""
    from components.integrations import mlflow_tracking

    run = mlflow_tracking.ensure_run(params, run_id, root, f"evaluate-{result['model_name']}")
    metrics = {"eval_top1": result["metrics"]["val.top1"], "eval_top5": result["metrics"]["val.top5"]}
    cal, reject = result["calibration"], result["reject"]
    metrics |= {"eval_ece_before": cal["ece_before"], "eval_ece_after": cal["ece_after"]}
    metrics |= {"eval_coverage": reject["coverage"], "eval_accepted_error": reject["accepted_error"]}
    run.log_metrics({**metrics, "eval_macro_f1": result["macro_f1"]}, step=0)
    names = (RESULT_FILE, "confusion_matrix.json", "confusion_matrix.png", PREDICTIONS_FILE)
    names += (RELIABILITY_PNG, RISK_COVERAGE_PNG)
    run.log_artifacts((out / name for name in names), artifact_path="evaluate")
