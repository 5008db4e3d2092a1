"""The GPU paths on a real CUDA device. Skipped, with the reason, where there is none (this project's CI);
bench/gpu_smoke.sh runs the same paths end to end and reports throughput."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.helpers import TINY_TRAIN, overrides

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def _train(dataset: Path, tmp_path: Path, device: str, output: str) -> subprocess.CompletedProcess:
    args = overrides(
        f"dataset.dir={dataset}",
        *TINY_TRAIN,
        "train.epochs=2",
        f"train.device={device}",
        f"train.output={output}",
        f"dataset.output={tmp_path}/out",
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    return subprocess.run(
        [sys.executable, "-m", "components.cli", "train", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@CUDA
def test_training_on_one_gpu(dataset: Path, tmp_path: Path) -> None:
    run = _train(dataset, tmp_path, "gpu", "gpu")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "gpu/train_result.json").read_text())["done_flag"] is True


@TWO_GPUS
def test_ddp_over_nccl_on_two_gpus(dataset: Path, tmp_path: Path) -> None:
    run = _train(dataset, tmp_path, "gpu:0,1", "ddp")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "ddp/train_result.json").read_text())
    assert result["done_flag"] is True and torch.load(tmp_path / "ddp/last.pt", weights_only=False)["world_size"] == 2


@CUDA
def test_gpu_inference_runs_on_cuda_or_says_why(tmp_path: Path) -> None:
    import onnxruntime as ort

    from components.core.errors import SortflowError
    from components.model.onnx_session import onnx_session

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 2, 2),), str(path), dynamo=False)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(SortflowError, match="install onnxruntime-gpu"):
            onnx_session(path, "gpu")
        return
    assert onnx_session(path, "gpu").get_providers()[0] == "CUDAExecutionProvider"
