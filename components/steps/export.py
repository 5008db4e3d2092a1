"""export: a checkpoint to ONNX that takes raw RGB pixels, checked against torch, optionally also INT8.

The model's contract (raw 0-255 RGB in, probabilities out) is in `deployable`; this step writes it,
checks it against torch on real val images, measures its val accuracy and, if asked, quantizes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.core.config import ExportParams, Params
from components.core.errors import InputError
from components.core.fsutil import atomic_write_json, file_digest, staged_dir
from components.core.locks import locked
from components.core.results import StepResult
from components.data.loader import read_split
from components.data.partition import prepared_dataset
from components.model.calibration import Calibration, calibrate, recorded_calibration
from components.model.checkpoints import CHECKPOINT_KEYS, load_checkpoint, weights_path
from components.model.contract import (
    EMBEDDER_FILE,
    EMBEDDINGS_FILE,
    INPUT_NAME,
    INT8_FILE,
    LABELS_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    PROFILE_FILE,
    RESULT_FILE,
    WEIGHTS_FILE,
)
from components.model.deployable import OPSET, Deployable, Embedder, deployable_from_checkpoint, export_onnx
from components.model.metrics import accuracy_at_k
from components.model.onnx_session import onnx_embeddings, onnx_probabilities, onnx_session, raw_images
from components.traffic.profiles import reference_profile
from components.triton_models import novelty

log = logging.getLogger(__name__)


def check_parity(
    model: Deployable, images: np.ndarray, got: np.ndarray, tolerance: float, rtol: float
) -> dict[str, Any]:
    """torch vs onnxruntime's probabilities `got` on the same images, compared as ONNX's and onnxruntime's own
    converter tests do (numpy's allclose): |got - torch| <= tolerance + rtol * |torch| everywhere, and the
    same top-1. An absolute bound alone flags ordinary float32 differences on the large probabilities."""
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    diff = np.abs(expected - got)
    worst = float((diff - rtol * np.abs(expected)).max())  # how far the worst entry is from the relative bound
    same_top1 = bool((expected.argmax(1) == got.argmax(1)).all())
    report = {"images": len(images), "max_abs_diff": float(diff.max()), "tolerance": tolerance, "rtol": rtol}
    report["same_top1"] = same_top1
    if worst > tolerance or not same_top1:
        raise InputError(
            f"exported ONNX model disagrees with torch on {len(images)} val images: max abs diff "
            f"{diff.max():.2e} (allowed: {tolerance:.0e} + {rtol:.0e} x probability), same top-1: {same_top1}; "
            "nothing was written"
        )
    return report


def _quantize(fp32: Path, int8: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def _contract(weights: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What export_result.json says of the model: its source, input, output, labels and preprocessing."""
    size = int(ckpt["data_config"]["image_size"])
    return {
        "weight_path": str(weights),
        "model_name": ckpt["model_name"],
        "mlflow_run_id": ckpt.get("mlflow_run_id"),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "format": "NCHW",
            "color": "RGB",
            "range": "0-255",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", ckpt["num_classes"]], "dtype": "float32"},
        "opset": OPSET,
        "labels": ckpt["label_names"],
        "data_config": ckpt["data_config"],
    }


def _int8(stage: Path, root: Path, data_config: dict[str, Any], images: np.ndarray, labels: np.ndarray) -> dict:
    """Write the INT8 model beside the FP32 one (calibrated on train images) and measure its val top-1."""
    calibration, _ = raw_images(root, "train", data_config, limit=64)
    _quantize(stage / MODEL_FILE, stage / INT8_FILE, calibration)
    top1 = accuracy_at_k(onnx_probabilities(onnx_session(stage / INT8_FILE), images), labels, 1)
    return {"file": INT8_FILE, "size_bytes": (stage / INT8_FILE).stat().st_size, "val_top1": top1}


def _calibration(
    params: Params, weights: Path, ckpt: dict[str, Any], images: np.ndarray, labels: np.ndarray
) -> Calibration:
    """evaluate's calibration of this checkpoint; fitted here the same way when evaluate has not run on it
    with the current settings (export alone, or before evaluate)."""
    e = params.evaluate
    found = recorded_calibration(e.output, file_digest(weights), e.target_precision, e.calibrate)
    if found is not None:
        return found
    log.info("No calibration of %s by evaluate with these settings: fitting it on val here", weights)
    model = deployable_from_checkpoint(ckpt)
    with torch.no_grad():
        logits = np.concatenate(
            [model.logits(torch.from_numpy(images[i : i + 64])).numpy() for i in range(0, len(images), 64)]
        )
    return calibrate(logits, labels, ckpt["label_names"], e.target_precision, fit=e.calibrate)


TRAIN_CHUNK = 256  # train images decoded at once for their embeddings


def _train_embeddings(session: Any, root: Path, data_config: dict[str, Any], matrix: np.ndarray) -> np.ndarray:
    """The embeddings of every train image (`novelty.project` by `matrix`), decoded a chunk at a time (a large
    train set never sits in memory)."""
    from rich.progress import track

    count = len(read_split(root, "train"))
    chunks = range(0, count, TRAIN_CHUNK)
    found = []
    for start in track(chunks, description="train embeddings", transient=True, disable=len(chunks) < 4):
        images = raw_images(root, "train", data_config, TRAIN_CHUNK, start)[0]
        found.append(novelty.project(onnx_embeddings(session, images)[1], matrix))
    return np.concatenate(found)


def _embeddings(
    stage: Path,
    model: Deployable,
    ckpt: dict[str, Any],
    root: Path,
    val: tuple[np.ndarray, np.ndarray],
    e: ExportParams,
) -> dict[str, Any]:
    """Write the embedder (checked against the classifier) and the embeddings file; what the reference profile
    records of them: the file, the dimension, k and the 99th percentile of the val images' novelty."""
    images, probabilities = val
    export_onnx(Embedder(model).eval(), int(ckpt["data_config"]["image_size"]), stage / EMBEDDER_FILE)
    session = onnx_session(stage / EMBEDDER_FILE)
    served, features = onnx_embeddings(session, images)
    if (
        not np.allclose(served, probabilities, atol=e.tolerance, rtol=e.rtol)
        or (served.argmax(1) != probabilities.argmax(1)).any()
    ):
        raise InputError(f"{EMBEDDER_FILE} disagrees with {MODEL_FILE} on the val images; nothing was written")
    matrix = novelty.projection(features.shape[1], e.embedding_dim)
    embedded = novelty.project(features, matrix)
    train = _train_embeddings(session, root, ckpt["data_config"], matrix)
    scores = novelty.novelty(embedded, train, e.novelty_neighbours)
    arrays = {novelty.TRAIN: train.astype(np.float16), novelty.VAL: embedded.astype(np.float16)}
    arrays.update({novelty.VAL_NOVELTY: scores, novelty.NEIGHBOURS: e.novelty_neighbours, novelty.PROJECTION: matrix})
    np.savez(stage / EMBEDDINGS_FILE, **arrays)
    p99 = float(np.quantile(scores, 0.99))
    return {"file": EMBEDDINGS_FILE, "dim": embedded.shape[1], "neighbours": e.novelty_neighbours, "novelty_p99": p99}


def _weights(ckpt: dict[str, Any], path: Path) -> None:
    """The model's weights and what rebuilds it (no optimizer state): the review sheet draws heatmaps with it."""
    torch.save({k: ckpt[k] for k in CHECKPOINT_KEYS}, path)


@dataclass(frozen=True)
class Int8Result:
    file: str
    size_bytes: int
    val_top1: float
    top1_change: float  # INT8's val top-1 less FP32's


@dataclass(frozen=True)
class ExportResult(StepResult):
    file: str  # model.onnx
    size_bytes: int
    val_top1: float
    val_top5: float
    parity_images: int
    max_abs_diff: float
    int8: Int8Result | None

    def text(self) -> str:
        lines = [
            f"Exported {self.file}: {self.size_bytes / 1e6:.1f} MB, val top-1 {self.val_top1:.4f}; parity with "
            f"torch on {self.parity_images} val images: max abs diff {self.max_abs_diff:.1e}, same top-1"
        ]
        if self.int8 is not None:
            q = self.int8
            lines.append(
                f"INT8: {q.file} {q.size_bytes / 1e6:.1f} MB, val top-1 {q.val_top1:.4f} "
                f"({q.top1_change * 100:+.2f} points)"
            )
        return "\n".join(lines)


@locked("export.output")
def export(params: Params) -> ExportResult:
    """Export the checkpoint `export.weight_path` (empty: best.pt in train.output) to ONNX.

    Reads the checkpoint and the val images of the prepared dataset (split.output, else dataset.dir).
    Writes `export.output` whole or not at all: model.onnx, labels.txt, export_result.json (contract,
    parity with torch, val top-1/top-5, the temperature folded into the model and the unsure route's
    thresholds, from evaluate's record of this checkpoint), reference_profile.json (what normal traffic looks
    like: the val set's predicted classes, confidences and image statistics), embedder.onnx (the model with
    its embedding as a second output), embeddings.npz (train and val embeddings), model.pt (the weights, for
    heatmaps) and, with `export.quantize`, model.int8.onnx. Raises
    SortflowError when the ONNX model disagrees with torch beyond `export.tolerance`.
    """
    weights = weights_path(params.export.weight_path, params.train.output)
    ckpt = load_checkpoint(weights, "export.weight_path")
    root = prepared_dataset(params, check=False)
    images, labels = raw_images(root, "val", ckpt["data_config"])
    calibration = _calibration(params, weights, ckpt, images, labels)
    model = deployable_from_checkpoint(ckpt, calibration.temperature)
    result = {**_contract(weights, ckpt), **calibration.record()}
    out = Path(params.export.output)
    with staged_dir(out, replace=True) as stage:
        export_onnx(model, int(ckpt["data_config"]["image_size"]), stage / MODEL_FILE)
        probabilities = onnx_probabilities(onnx_session(stage / MODEL_FILE), images)
        result.update(_quality(stage, model, (images, labels, probabilities), root, ckpt, params.export))
        (stage / LABELS_FILE).write_text("".join(f"{name}\n" for name in ckpt["label_names"]), encoding="utf-8")
        paths = [s.path for s in read_split(root, "val")]
        thresholds = calibration.threshold_array(ckpt["label_names"]).tolist()
        embedding = _embeddings(stage, model, ckpt, root, (images, probabilities), params.export)
        _weights(ckpt, stage / WEIGHTS_FILE)
        profile = reference_profile(paths, probabilities, ckpt["label_names"], thresholds, embedding)
        atomic_write_json(stage / PROFILE_FILE, profile)
        result["reference_profile"] = PROFILE_FILE
        atomic_write_json(stage / RESULT_FILE, result)
    log.info(
        "Exported %s to %s: parity max diff %.1e on %d images, val top-1 %.4f",
        weights,
        out / MODEL_FILE,
        result["parity"]["max_abs_diff"],
        result["parity"]["images"],
        result["val_top1"],
    )
    return _typed(out, result)


def _quality(
    stage: Path,
    model: Deployable,
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    root: Path,
    ckpt: dict[str, Any],
    settings: ExportParams,
) -> dict[str, Any]:
    """The exported model's parity with torch, its val top-1/top-5 and size, and with `export.quantize` the
    int8 model's: the figures of export_result.json."""
    images, labels, probabilities = val
    n = settings.parity_images
    figures: dict[str, Any] = {
        "parity": check_parity(model, images[:n], probabilities[:n], settings.tolerance, settings.rtol),
        "val_top1": accuracy_at_k(probabilities, labels, 1),
        "val_top5": accuracy_at_k(probabilities, labels, 5),
        "size_bytes": (stage / MODEL_FILE).stat().st_size,
    }
    if settings.quantize:
        figures["int8"] = _int8(stage, root, ckpt["data_config"], images, labels)
        figures["int8"]["top1_change"] = figures["int8"]["val_top1"] - figures["val_top1"]
    return figures


def _typed(out: Path, result: dict[str, Any]) -> ExportResult:
    int8 = result.get("int8")
    return ExportResult(
        str(out / MODEL_FILE),
        result["size_bytes"],
        result["val_top1"],
        result["val_top5"],
        result["parity"]["images"],
        result["parity"]["max_abs_diff"],
        Int8Result(str(out / int8["file"]), int8["size_bytes"], int8["val_top1"], int8["top1_change"])
        if int8
        else None,
    )
