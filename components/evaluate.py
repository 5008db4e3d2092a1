"""evaluate: top-1/top-5, per-class precision/recall/F1 and the confusion matrix of a checkpoint on val.txt."""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import Params
from components.errors import SortflowError
from components.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from components.loader import model_input
from components.split import prepared_dataset

log = logging.getLogger(__name__)

RESULT_FILE = "evaluate_result.json"
PREDICTIONS_FILE = "predictions.csv"
CHECKPOINT_KEYS = ("model", "model_name", "timm_name", "num_classes", "label_names", "data_config")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A sortflow checkpoint, loaded with weights_only=True (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise SortflowError(f"{path}: checkpoint not found; train first or set evaluate.weight_path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise SortflowError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise SortflowError(f"{path}: not a sortflow checkpoint (missing {', '.join(missing)})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    from components.models import create_model, get_spec

    model = create_model(get_spec(ckpt["timm_name"]), ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: Any, device: torch.device, amp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, on the CPU) and targets for every batch of the loader."""
    was_training = model.training
    model.eval()
    logits, targets = [], []
    for images, labels in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(model_input(images, device))
        logits.append(out.float().cpu())
        targets.append(labels)
    model.train(was_training)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)


def correct_at_k(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    if len(targets) == 0:
        return 0
    top = logits.topk(k, dim=1).indices
    return int((top == targets[:, None]).any(dim=1).sum())


def _confusion_png(matrix: np.ndarray, names: list[str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = max(5, len(names) * 0.45)
    fig = Figure(figsize=(size + 1, size))
    FigureCanvasAgg(fig)
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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def class_metrics(
    targets: np.ndarray, predicted: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Confusion matrix (rows: true class) and per-class precision, recall and F1 (0 where undefined).

    The same figures as scikit-learn's with zero_division=0, without its 3 s import in every DVC stage.
    """
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (targets, predicted), 1)
    hits = np.diag(matrix).astype(float)
    precision = np.divide(hits, matrix.sum(0), out=np.zeros(k), where=matrix.sum(0) > 0)
    recall = np.divide(hits, matrix.sum(1), out=np.zeros(k), where=matrix.sum(1) > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(k), where=both > 0)
    return matrix, precision, recall, f1


def evaluate(params: Params) -> dict[str, Any]:
    """Evaluate `evaluate.weight_path` on the val list of `dataset.dir`; write and log the results."""
    from torch.utils.data import DataLoader

    from components.loader import ClsImages, DataConfig, ImageStore, read_classes, read_split, transform

    weights = Path(params.evaluate.weight_path)
    ckpt = load_checkpoint(weights)
    root = prepared_dataset(params, check=False)
    classes = read_classes(root)
    if classes != ckpt["label_names"]:
        raise SortflowError(
            f"{weights}: trained on {ckpt['num_classes']} classes ({', '.join(ckpt['label_names'][:5])}...), but "
            f"{root / 'label.txt'} has {len(classes)} ({', '.join(classes[:5])}...); evaluate it on its own dataset"
        )
    cfg = DataConfig(**ckpt["data_config"])
    samples = read_split(root, "val")
    store = ImageStore([s.path for s in samples], params.train.cache_mb * 1024 * 1024, 2 * cfg.image_size)
    dataset = ClsImages(store, [s.label for s in samples], transform(cfg, training=False))
    model = model_from_checkpoint(ckpt).to(memory_format=torch.channels_last)
    began = time.perf_counter()
    logits, targets = predict_logits(
        model, DataLoader(dataset, batch_size=params.evaluate.batch_size), torch.device("cpu")
    )
    n, k = len(targets), len(classes)
    predicted = logits.argmax(1).numpy()
    matrix, precision, recall, f1 = class_metrics(targets.numpy(), predicted, k)
    support = matrix.sum(1)
    top1, top5 = correct_at_k(logits, targets, 1) / n, correct_at_k(logits, targets, min(5, k)) / n
    out = Path(params.evaluate.output)
    result = {
        "done_flag": True,
        "metrics": {"val.top1": top1, "val.top5": top5},
        "weight_path": str(weights),
        "model_name": ckpt["model_name"],
        "num_samples": n,
        "seconds": round(time.perf_counter() - began, 2),
        "per_class": [
            {
                "class_id": i,
                "label_name": classes[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        ],
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": "confusion_matrix.json",
        "predictions": PREDICTIONS_FILE,
    }
    atomic_write_json(out / "confusion_matrix.json", {"labels": classes, "matrix": matrix.tolist()})
    # One row per image, in the shape of DVC's confusion-matrix plot template and handy for error analysis.
    scores = torch.softmax(logits, 1).max(1).values.tolist()
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["path", "actual", "predicted", "score"])
    for sample, actual, guess, score in zip(samples, targets.tolist(), predicted.tolist(), scores, strict=True):
        writer.writerow(
            [Path(sample.path).relative_to(root).as_posix(), classes[actual], classes[guess], f"{score:.4f}"]
        )
    atomic_write_text(out / PREDICTIONS_FILE, table.getvalue())
    _confusion_png(matrix, classes, out / "confusion_matrix.png")
    atomic_write_json(out / RESULT_FILE, result)
    log.info("Evaluated %s on %d val images: top-1 %.4f, top-5 %.4f", weights, n, top1, top5)
    _log_to_mlflow(params, ckpt.get("mlflow_run_id"), result, out, root)
    return result


def _log_to_mlflow(params: Params, run_id: str | None, result: dict[str, Any], out: Path, root: Path) -> None:
    """Log to the training run of the checkpoint, or to a new run when the store does not have it."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from components import tracking

    client, experiment_id = tracking.client(params.mlflow)
    try:
        if run_id:
            client.get_run(run_id)
    except MlflowException:
        log.warning(
            "MLflow run %s of this checkpoint is not in %s; logging to a new run",
            run_id,
            tracking.tracking_uri(params.mlflow),
        )
        run_id = None
    if run_id is None:
        run_id = client.create_run(
            experiment_id, run_name=f"evaluate-{result['model_name']}", tags=tracking.lineage_tags(params, root)
        ).info.run_id
        client.set_terminated(run_id, "FINISHED")
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric("eval_top1", result["metrics"]["val.top1"], now, 0),
            Metric("eval_top5", result["metrics"]["val.top5"], now, 0),
            Metric("eval_macro_f1", result["macro_f1"], now, 0),
        ],
    )
    for name in (RESULT_FILE, "confusion_matrix.json", "confusion_matrix.png", PREDICTIONS_FILE):
        client.log_artifact(run_id, str(out / name), artifact_path="evaluate")
