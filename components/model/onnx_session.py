"""Running an exported model: onnxruntime sessions, probabilities in batches, and images as it takes them.

Torch is imported only by `pixels`, so register and publish start without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.core.errors import InputError
from components.model.contract import EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME


def onnx_session(path: Path, device: str = "cpu") -> Any:
    """An onnxruntime session on the CPU, or on CUDA for `gpu`/`gpu:N`. Asked for a GPU, it runs there or
    fails: onnxruntime would otherwise fall back to the CPU with only a warning when CUDA or cuDNN fail."""
    import onnxruntime as ort

    from components.core.devices import parse_device

    spec = parse_device(device, "device", several=False)
    if spec.kind != "cuda":
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InputError(
            f"device={device}: this onnxruntime has no CUDA provider; install onnxruntime-gpu in place of "
            "onnxruntime (pip uninstall onnxruntime; pip install 'sortflow[gpu]'), or use device: cpu"
        )
    session = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", {"device_id": spec.ids[0]})])
    require_cuda(session.get_providers(), device)
    return session


def require_cuda(providers: list[str], device: str) -> None:
    """A session asked to run on a GPU whose first provider is not CUDA fell back to the CPU: an error."""
    if not providers or providers[0] != "CUDAExecutionProvider":
        raise InputError(
            f"device={device}: onnxruntime did not load its CUDA provider (the session runs on {providers}); "
            "check that the CUDA and cuDNN libraries that onnxruntime-gpu needs are installed, or use device: cpu"
        )


def onnx_probabilities(session: Any, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """The model's probabilities for `images` (raw 0-255 pixels), run `batch` images at a time."""
    return np.concatenate(
        [session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )


def onnx_embeddings(session: Any, images: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An embedder's probabilities and pooled features for `images` (raw 0-255 pixels), `batch` images at a time
    (`novelty.project` makes the features embeddings)."""
    runs = [
        session.run([OUTPUT_NAME, EMBEDDING_NAME], {INPUT_NAME: images[i : i + batch]})
        for i in range(0, len(images), batch)
    ]
    return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])


def pixels(files: Sequence[str | Path], data_config: dict[str, Any]) -> np.ndarray:
    """Image files as the exported model takes them (resized, cropped, 0-255), stacked: float32 [n, 3, H, W]."""
    from components.data.loader import DataConfig, prepared, transform

    tf = transform(DataConfig(**data_config), training=False, normalize=False)
    return np.stack([prepared(f, tf).numpy() for f in files]).astype(np.float32)


def raw_images(
    dataset_dir: Path, split: str, data_config: dict[str, Any], limit: int | None = None, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images of a split as the exported model takes them (`pixels`), and labels: the `limit` images from line
    `start` on (all by default)."""
    from components.data.loader import read_split

    samples = read_split(dataset_dir, split)[start : None if limit is None else start + limit]
    if not samples:
        raise InputError(f"{dataset_dir}/{split}.txt: no images to check the exported model on")
    return pixels([s.path for s in samples], data_config), np.array([s.label for s in samples])
