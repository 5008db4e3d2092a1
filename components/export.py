"""export: a checkpoint to ONNX that takes raw RGB pixels, checked against torch, optionally also INT8.

The graph's input is `image`, float32 [batch, 3, H, W], RGB pixel values 0-255, already resized and
center-cropped as in evaluation (so any client can feed decoded pixels); normalization by the model's
mean and std happens inside the graph. The output is `probabilities`, float32 [batch, num_classes].
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import Params
from components.errors import SortflowError
from components.evaluate import load_checkpoint, model_from_checkpoint
from components.fsutil import atomic_write_json, staged_dir
from components.model_io import INPUT_NAME, INT8_FILE, LABELS_FILE, MODEL_FILE, OUTPUT_NAME, RESULT_FILE
from components.split import prepared_dataset

log = logging.getLogger(__name__)

OPSET = 17


class Deployable(nn.Module):
    """Raw 0-255 RGB in, class probabilities out: the model with its preprocessing and softmax."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1 / (255 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", -torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image * self.scale + self.shift).softmax(dim=1)


def deployable_from_checkpoint(ckpt: dict[str, Any]) -> Deployable:
    cfg = ckpt["data_config"]
    return Deployable(model_from_checkpoint(ckpt), tuple(cfg["mean"]), tuple(cfg["std"])).eval()


def raw_images(
    dataset_dir: Path, split: str, data_config: dict[str, Any], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images of a split as the exported model takes them (resized, cropped, 0-255 float), and labels."""
    from components.images import load_rgb
    from components.loader import DataConfig, read_split, transform

    cfg = DataConfig(**data_config)
    tf = transform(cfg, training=False, normalize=False)
    samples = read_split(dataset_dir, split)[:limit]
    images = [tf(torch.from_numpy(np.array(load_rgb(s.path))).permute(2, 0, 1)).numpy() for s in samples]
    if not images:
        raise SortflowError(f"{dataset_dir}/{split}.txt: no images to check the exported model on")
    return np.stack(images).astype(np.float32), np.array([s.label for s in samples])


def onnx_session(path: Path, device: str = "cpu") -> Any:
    """An onnxruntime session on the CPU, or on CUDA for `gpu`/`gpu:N` (an error where CUDA is missing)."""
    import onnxruntime as ort

    if not device.startswith("gpu"):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SortflowError(
            f"device={device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu) or use device: cpu"
        )
    gpu = int(device.partition(":")[2] or 0)
    return ort.InferenceSession(
        str(path), providers=[("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    )


def onnx_probabilities(session: Any, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate(
        [session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )


def export_onnx(model: Deployable, size: int, path: Path) -> None:
    import onnx

    example = torch.rand(2, 3, size, size) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def check_parity(model: Deployable, images: np.ndarray, got: np.ndarray, tolerance: float) -> dict[str, Any]:
    """torch vs onnxruntime's probabilities `got` on the same images: all within `tolerance`, same top-1."""
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    diff = float(np.abs(expected - got).max())
    same_top1 = bool((expected.argmax(1) == got.argmax(1)).all())
    report = {"images": len(images), "max_abs_diff": diff, "tolerance": tolerance, "same_top1": same_top1}
    if diff > tolerance or not same_top1:
        raise SortflowError(
            f"exported ONNX model disagrees with torch on {len(images)} val images: max abs diff "
            f"{diff:.2e} (tolerance {tolerance:.0e}), same top-1: {same_top1}; nothing was written"
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


def export(params: Params) -> dict[str, Any]:
    """Write model.onnx, labels.txt and export_result.json under `export.output`, all or nothing."""
    weights = Path(params.export.weight_path)
    ckpt = load_checkpoint(weights)
    model = deployable_from_checkpoint(ckpt)
    size = int(ckpt["data_config"]["image_size"])
    root = prepared_dataset(params, check=False)
    images, labels = raw_images(root, "val", ckpt["data_config"])
    result: dict[str, Any] = {
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
    out = Path(params.export.output)
    with staged_dir(out, replace=True) as stage:
        export_onnx(model, size, stage / MODEL_FILE)
        probabilities = onnx_probabilities(onnx_session(stage / MODEL_FILE), images)
        n = params.export.parity_images
        result["parity"] = check_parity(model, images[:n], probabilities[:n], params.export.tolerance)
        fp32_top1 = float((probabilities.argmax(1) == labels).mean())
        top5 = np.argsort(-probabilities, axis=1)[:, :5]
        result["val_top1"] = fp32_top1
        result["val_top5"] = float((top5 == labels[:, None]).any(axis=1).mean())
        result["size_bytes"] = (stage / MODEL_FILE).stat().st_size
        if params.export.quantize:
            calibration, _ = raw_images(root, "train", ckpt["data_config"], limit=64)
            _quantize(stage / MODEL_FILE, stage / INT8_FILE, calibration)
            int8_top1 = float((onnx_probabilities(onnx_session(stage / INT8_FILE), images).argmax(1) == labels).mean())
            result["int8"] = {
                "file": INT8_FILE,
                "size_bytes": (stage / INT8_FILE).stat().st_size,
                "val_top1": int8_top1,
                "top1_change": int8_top1 - fp32_top1,
            }
        (stage / LABELS_FILE).write_text("".join(f"{name}\n" for name in ckpt["label_names"]), encoding="utf-8")
        atomic_write_json(stage / RESULT_FILE, result)
    log.info(
        "Exported %s to %s: parity max diff %.1e on %d images, val top-1 %.4f",
        weights,
        out / MODEL_FILE,
        result["parity"]["max_abs_diff"],
        result["parity"]["images"],
        fp32_top1,
    )
    return result
