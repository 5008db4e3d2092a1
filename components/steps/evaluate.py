"""evaluate: top-1/top-5, per-class precision/recall/F1 and the confusion matrix of a checkpoint on val.txt."""

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
from components.core.fsutil import atomic_write_json, atomic_write_text
from components.core.locks import locked
from components.core.plots import figure, save_png
from components.core.results import StepResult
from components.data.partition import prepared_dataset
from components.model.checkpoints import check_classes, load_checkpoint, model_from_checkpoint, weights_path
from components.model.metrics import accuracy_at_k, class_metrics, predict_logits

log = logging.getLogger(__name__)

RESULT_FILE = "evaluate_result.json"
PREDICTIONS_FILE = "predictions.csv"


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


def _write_predictions(path: Path, root: Path, samples: list[Any], classes: list[str], logits: np.ndarray) -> None:
    """One row per image, in the shape of DVC's confusion-matrix plot template and handy for error analysis."""
    scores = torch.softmax(torch.from_numpy(logits), 1).max(1).values.tolist()
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["path", "actual", "predicted", "score"])
    for sample, guess, score in zip(samples, logits.argmax(1).tolist(), scores, strict=True):
        rel = Path(sample.path).relative_to(root).as_posix()
        writer.writerow([rel, classes[sample.label], classes[guess], f"{score:.4f}"])
    atomic_write_text(path, table.getvalue())


@dataclass(frozen=True)
class EvaluateResult(StepResult):
    model_name: str
    weight_path: str
    num_samples: int
    top1: float
    top5: float
    macro_f1: float
    report: str  # evaluate_result.json

    def text(self) -> str:
        return (
            f"val.top1 {self.top1:.4f}  val.top5 {self.top5:.4f}  ({self.num_samples} images, {self.weight_path})\n"
            f"Report: {self.report}"
        )


@locked("evaluate.output")
def evaluate(params: Params) -> EvaluateResult:
    """Evaluate the checkpoint `evaluate.weight_path` (empty: best.pt in train.output) on the val list.

    Reads the checkpoint and the val images of the prepared dataset (split.output, else dataset.dir).
    Writes under `evaluate.output`: evaluate_result.json (top-1/top-5, per-class metrics, macro F1),
    confusion_matrix.json and .png, and predictions.csv; logs them to the checkpoint's MLflow run (or a
    new run where the store lacks it). Raises SortflowError for a missing checkpoint or other classes.
    """
    from components.data.loader import read_classes

    weights = weights_path(params.evaluate.weight_path, params.train.output)
    ckpt = load_checkpoint(weights, "evaluate.weight_path")
    root = prepared_dataset(params, check=False)
    classes = read_classes(root)
    check_classes(ckpt, classes, weights, root / "label.txt", "evaluate it on its own dataset")
    began = time.perf_counter()
    samples, logits, targets = _val_logits(root, ckpt, params)
    per_class, matrix = _per_class(classes, targets, logits.argmax(1))
    top1, top5 = accuracy_at_k(logits, targets, 1), accuracy_at_k(logits, targets, 5)
    out = Path(params.evaluate.output)
    result = {
        "done_flag": True,
        "metrics": {"val.top1": top1, "val.top5": top5},
        "weight_path": str(weights),
        "model_name": ckpt["model_name"],
        "num_samples": len(targets),
        "seconds": round(time.perf_counter() - began, 2),
        "per_class": per_class,
        "macro_f1": float(np.mean([c["f1"] for c in per_class])),
        "confusion_matrix": "confusion_matrix.json",
        "predictions": PREDICTIONS_FILE,
    }
    atomic_write_json(out / "confusion_matrix.json", {"labels": classes, "matrix": matrix.tolist()})
    _write_predictions(out / PREDICTIONS_FILE, root, samples, classes, logits)
    _confusion_png(matrix, classes, out / "confusion_matrix.png")
    atomic_write_json(out / RESULT_FILE, result)
    log.info("Evaluated %s on %d val images: top-1 %.4f, top-5 %.4f", weights, len(targets), top1, top5)
    _log_to_mlflow(params, ckpt.get("mlflow_run_id"), result, out, root)
    return EvaluateResult(
        ckpt["model_name"], str(weights), len(targets), top1, top5, result["macro_f1"], str(out / RESULT_FILE)
    )


def _log_to_mlflow(params: Params, run_id: str | None, result: dict[str, Any], out: Path, root: Path) -> None:
    """Log to the training run of the checkpoint, or to a new run when the store does not have it."""
    from components.integrations import mlflow_tracking

    run = mlflow_tracking.ensure_run(params, run_id, root, f"evaluate-{result['model_name']}")
    metrics = {"eval_top1": result["metrics"]["val.top1"], "eval_top5": result["metrics"]["val.top5"]}
    run.log_metrics({**metrics, "eval_macro_f1": result["macro_f1"]}, step=0)
    names = (RESULT_FILE, "confusion_matrix.json", "confusion_matrix.png", PREDICTIONS_FILE)
    run.log_artifacts((out / name for name in names), artifact_path="evaluate")
