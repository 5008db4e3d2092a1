"""Triton python-backend model: encoded image files (JPEG/PNG bytes) -> the pixels the classifier takes.

Decode, apply the EXIF orientation, convert to RGB, resize the short side and center crop exactly as
sortflow evaluates, and emit float32 0-255 NCHW. Its parameters come from config.pbtxt.
"""

from __future__ import annotations

import io
import json

import numpy as np


def preprocess(data: bytes, size: int, resize: int, interpolation: str) -> np.ndarray:
    """One encoded image -> float32 [3, size, size], RGB 0-255."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I"):
            image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
        image = image.convert("RGB")
    import torch
    from torchvision.transforms import InterpolationMode, v2

    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    tensor = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
    tensor = v2.CenterCrop(size)(v2.Resize(resize, interpolation=mode, antialias=True)(tensor))
    return tensor.float().numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.size = int(parameters["image_size"])
        self.resize = int(parameters["resize_size"])
        self.interpolation = parameters["interpolation"]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy()
            try:
                pixels = np.stack(
                    [preprocess(bytes(item[0]), self.size, self.resize, self.interpolation) for item in encoded]
                )
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("image", pixels.astype(np.float32))]))
            except Exception as exc:  # a file that is not an image fails its own request, not the server
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"cannot decode image: {exc}")))
        return responses
