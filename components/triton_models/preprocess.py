"""Encoded image files (JPEG/PNG bytes) -> the pixels the classifier takes; used by the `<model>_bytes` model.

Decode, apply the EXIF orientation, convert to RGB, resize the short side and center crop exactly as
sortflow evaluates, and emit float32 0-255 CHW.
"""

from __future__ import annotations

import io

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
