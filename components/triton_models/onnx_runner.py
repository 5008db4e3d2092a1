"""Triton python-backend model that runs an ONNX file with onnxruntime.

Used by `sortflow serve` when the Triton server at hand has no onnxruntime backend (the server bundled
in the nvidia-pytriton wheel): same model name, inputs, outputs, labels and batching as the stock
`platform: "onnxruntime_onnx"` config in the published repository.
"""

from __future__ import annotations

import json
from pathlib import Path


def providers_for(kind: str, device_id: int, available: list[str]) -> list:
    """onnxruntime providers for a Triton instance of `kind` (model_instance_kind: CPU or GPU): a GPU
    instance runs on the CUDA provider of its own device, or fails to load, never quietly on the CPU."""
    if kind != "GPU":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"instance_group kind KIND_GPU, but this onnxruntime has no CUDA provider (it has {available}); "
            "install onnxruntime-gpu where Triton runs, or publish with -o publish.instance_kind=cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": device_id})]


def open_session(path: Path, threads: int, kind: str = "CPU", device: int = 0) -> object:
    """An onnxruntime session for `path` with `threads` intra-op threads (0 = onnxruntime's default) on the
    instance's device; also the session of `<model>_bytes` when it runs the model itself."""
    import onnxruntime as ort

    if not path.is_file():
        raise RuntimeError(f"{path} is missing: publish the model again (sortflow publish)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(path), options, providers=providers_for(kind, device, ort.get_available_providers())
    )
    if kind == "GPU" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"the CUDA provider did not load on GPU {device} (CUDA or cuDNN missing?)")
    return session


def finite(pixels: object) -> bool:
    """Whether no value is NaN or infinite. The sum is one pass without a temporary array: it is finite only
    if every value is; only when it is not (also when large values overflow it) is each value checked."""
    import numpy as np

    return bool(np.isfinite(pixels.sum()) or np.isfinite(pixels).all())


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        kind, device = args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0))
        # The stock onnxruntime backend's parameter, so both servers run the model with the same threads.
        threads = int(config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value", 0))
        self.session = open_session(path, threads, kind, device)

    def execute(self, requests: list) -> list:
        import numpy as np
        import triton_python_backend_utils as pb_utils

        # Dynamic batching hands over several requests at once: run the valid ones as one batch. Pixels that
        # are NaN or infinite are the client's mistake (INVALID_ARGUMENT), not NaN probabilities.
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        valid = [finite(batch) for batch in inputs]
        good = [batch for batch, ok in zip(inputs, valid, strict=True) if ok]
        batch = good[0] if len(good) == 1 else np.concatenate(good) if good else None  # no copy for one request
        outputs = self.session.run([self.output_name], {self.input_name: batch})[0] if good else None
        responses, start = [], 0
        for batch, ok in zip(inputs, valid, strict=True):
            if not ok:
                error = pb_utils.TritonError(
                    f"input {self.input_name!r} holds NaN or infinite values; send pixel values 0-255",
                    pb_utils.TritonError.INVALID_ARG,
                )
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            part = outputs[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]))
        return responses
