"""Likely label errors: out-of-fold class probabilities of every listed image, ranked by cleanlab.

The network summarises each image by its features at several depths (`deployable.StageSummary`: the mean and
spread of each stage's feature maps, and the pooled penultimate features); a logistic regression,
cross-validated over `folds` (each image scored by a model that did not see it), gives out-of-fold
probabilities, and cleanlab's confident learning finds the images whose given label those probabilities
contradict. Cheap: one forward pass of the network, no retraining of it.

The network is the trained checkpoint's, with the weights it started from (`train.pretrained`) where it
started from any, read at the resolution those weights were trained at: a network fine-tuned on the very
labels under audit has learned the wrong ones too, and its features hide them (bench/bench_see.py measures
what the ImageNet ones find on TrashNet with 5% of the labels flipped). Its earlier stages count because
ImageNet's penultimate features keep little of the texture and colour that tell materials apart.
The features outnumber the images of a class, so the regression's strength matters: of C_GRID, the one whose
out-of-fold probabilities fit the given labels best (log-loss) is used. None of these choices looks at which
labels are wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Inverse regularisation strengths of the logistic regression, in half decades, tried from the strongest
# regularisation up: each fit starts from the previous one's weights.
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def features(ckpt: dict[str, Any], files: list[str], batch_size: int) -> np.ndarray:
    """The checkpoint's stage summary (`deployable.StageSummary`) of each image file, evaluation preprocessing.
    Run by onnxruntime, faster than torch on a CPU (TrashNet at 224 px here: 35 s against 56 s, export included)."""
    import tempfile

    from rich.progress import track

    from components.model.contract import FEATURES_NAME, INPUT_NAME
    from components.model.deployable import StageSummary, deployable_from_checkpoint, export_onnx
    from components.model.onnx_session import onnx_session, pixels

    size = int(ckpt["data_config"]["image_size"])
    with tempfile.TemporaryDirectory() as tmp:  # the session holds the model in memory: the file can go
        path = Path(tmp) / "features.onnx"
        export_onnx(StageSummary(deployable_from_checkpoint(ckpt)).eval(), size, path)
        session = onnx_session(path)
    batches = range(0, len(files), batch_size)
    out = [
        session.run([FEATURES_NAME], {INPUT_NAME: pixels(files[i : i + batch_size], ckpt["data_config"])})[0]
        for i in track(batches, description="features", transient=True, disable=len(batches) < 4)
    ]
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def unlearned(ckpt: dict[str, Any], pretrained: str) -> dict[str, Any]:
    """The checkpoint with the weights its training started from (`train.pretrained`: imagenet or a weights
    file) in place of its fine-tuned ones, and the architecture's pretrained input size (timm's; 224 px for
    EfficientNet-Lite0) in place of the fine-tune's; the checkpoint itself when it was trained from scratch."""
    if pretrained in ("", "none"):
        return ckpt
    from components.model.zoo import create_model, get_spec

    spec = get_spec(ckpt["timm_name"])
    start = create_model(spec, ckpt["num_classes"], pretrained)
    data_config = {**ckpt["data_config"], "image_size": spec.input_size}
    return {**ckpt, "model": start.state_dict(), "data_config": data_config}


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, classes: int, folds: int) -> np.ndarray:
    """[images, classes]: each image's class probabilities from a logistic regression fitted on the other folds
    (stratified; fewer folds when the smallest class has fewer images), with the strength of C_GRID whose
    probabilities have the lowest log-loss on the given labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    present = np.unique(labels)
    smallest = int(np.bincount(labels)[present].min())
    cv = StratifiedKFold(max(2, min(folds, smallest)), shuffle=True, random_state=0)
    # float32 as the features (sklearn fits in their precision); a class with no image keeps probability 0
    tried = np.zeros((len(C_GRID), len(labels), classes), dtype=np.float32)
    for train, test in cv.split(features, labels):
        scale = StandardScaler().fit(features[train])
        seen, unseen = scale.transform(features[train]), scale.transform(features[test])
        model = LogisticRegression(max_iter=1000, warm_start=True)
        for j, c in enumerate(C_GRID):
            model.set_params(C=c).fit(seen, labels[train])
            tried[j][np.ix_(test, model.classes_)] = model.predict_proba(unseen)
    losses = [log_loss(labels, p[:, present], labels=present) for p in tried]
    return tried[int(np.argmin(losses))]


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
