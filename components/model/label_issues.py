"""Likely label errors: out-of-fold class probabilities of every listed image, ranked by cleanlab.

The network turns each image into its pooled penultimate features; a logistic regression, cross-validated
over `folds` (each image scored by a model that did not see it), gives out-of-fold probabilities, and
cleanlab's confident learning finds the images whose given label those probabilities contradict. Cheap: one
forward pass of the network, no retraining of it.

The network is the trained checkpoint's, with the weights it started from (`train.pretrained`) where it
started from any: a network fine-tuned on the very labels under audit has learned the wrong ones too, and
its features hide them (on TrashNet with 5% of the labels flipped, the fine-tuned features found 7% of them,
the ImageNet ones 94%: bench/bench_see.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def embeddings(ckpt: dict[str, Any], files: list[str], batch_size: int) -> np.ndarray:
    """The checkpoint's pooled penultimate features of each image file (evaluation preprocessing)."""
    import torch

    from components.data.loader import DataConfig, model_input, prepared, transform
    from components.model.checkpoints import model_from_checkpoint

    model = model_from_checkpoint(ckpt)
    tf = transform(DataConfig(**ckpt["data_config"]), training=False)
    out = []
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            images = [prepared(f, tf) for f in files[start : start + batch_size]]
            x = model_input(torch.stack(images), torch.device("cpu"))
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().numpy())
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def unlearned(ckpt: dict[str, Any], pretrained: str) -> dict[str, Any]:
    """The checkpoint with the weights its training started from (`train.pretrained`: imagenet or a weights
    file) in place of its fine-tuned ones; the checkpoint itself when it was trained from scratch."""
    if pretrained in ("", "none"):
        return ckpt
    from components.model.zoo import create_model, get_spec

    start = create_model(get_spec(ckpt["timm_name"]), ckpt["num_classes"], pretrained)
    return {**ckpt, "model": start.state_dict()}


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, classes: int, folds: int) -> np.ndarray:
    """[images, classes]: each image's class probabilities from a logistic regression fitted on the other folds
    (stratified; fewer folds when the smallest class has fewer images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels, minlength=classes)[np.bincount(labels, minlength=classes) > 0].min())
    splits = max(2, min(folds, smallest))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(splits, shuffle=True, random_state=0)
    found = cross_val_predict(model, features, labels, cv=cv, method="predict_proba")
    out = np.zeros((len(labels), classes))
    out[:, np.unique(labels)] = found  # a class with no image has no column in sklearn's answer
    return out


@dataclass(frozen=True)
class LabelIssue:
    """An image whose given label its out-of-fold probabilities contradict, ranked (1: most likely wrong)."""

    rank: int
    index: int  # into the audited images
    given: int
    suggested: int
    given_probability: float
    suggested_probability: float


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> list[LabelIssue]:
    """cleanlab's label issues (confident learning), least self-confident first."""
    from cleanlab.filter import find_label_issues

    # n_jobs=1: cleanlab's default forks a worker per core, and a fork of a process that runs threads (a Prefect
    # flow, torch) can deadlock in the child; one process is fast enough for these counts.
    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [
        LabelIssue(
            rank,
            int(i),
            int(labels[i]),
            int(probabilities[i].argmax()),
            float(probabilities[i, labels[i]]),
            float(probabilities[i].max()),
        )
        for rank, i in enumerate(ranked, start=1)
    ]
