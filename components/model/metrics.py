"""Classification metrics over scores and targets, shared by training, evaluation, export and register.

numpy only at import: register and the release steps use it without loading torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def correct_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> int:
    """How many targets are among the k highest scores of their row (ties go to the lower class index)."""
    if len(targets) == 0:
        return 0
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return int((top == np.asarray(targets)[:, None]).any(axis=1).sum())


def accuracy_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """The share of targets among the k highest scores (0 for no targets)."""
    return correct_at_k(scores, targets, k) / len(targets) if len(targets) else 0.0


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


def predict_logits(model: Any, loader: Any, device: Any, amp: bool = False) -> tuple[Any, Any]:
    """Logits (float32 tensor, on the CPU) and targets for every batch of the loader; the model's mode is kept."""
    import torch

    from components.data.loader import model_input

    was_training = model.training
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for images, labels in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(model_input(images, device))
            logits.append(out.float().cpu())
            targets.append(labels)
    model.train(was_training)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)
