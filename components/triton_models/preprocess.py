"""Encoded image files (JPEG/PNG bytes) -> the pixels the classifier takes; used by the `<model>_bytes` model.

Decode, apply the EXIF orientation, convert to RGB, resize the short side and center crop exactly as
sortflow evaluates, and emit float32 0-255 CHW. A file that is empty, not an image, truncated or above the
pixel limit raises BadImage: the client's mistake, answered as INVALID_ARGUMENT.
"""

from __future__ import annotations

import io

import numpy as np


class BadImage(ValueError):
    """A file the model cannot take (the message says why); the client, not the server, is to fix it."""


def _rgb(data: bytes, max_pixels: int) -> object:
    """The decoded RGB image; the pixel limit is checked on the header, before anything is decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if max_pixels and width * height > max_pixels:
                raise BadImage(
                    f"{width}x{height} is {width * height} pixels, above serve.max_image_pixels={max_pixels}; "
                    "send a smaller image"
                )
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I"):
                image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
            return image.convert("RGB")
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"not an image file ({len(data)} bytes in no format Pillow reads: JPEG, PNG, ...)") from None
    except Exception as exc:  # whatever the decoder says of bytes it cannot read, the bytes are at fault
        raise BadImage(f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def preprocess(data: bytes, size: int, resize: int, interpolation: str, max_pixels: int = 0) -> np.ndarray:
    """One encoded image -> float32 [3, size, size], RGB 0-255. `max_pixels` 0: no limit of ours."""
    image = _rgb(data, max_pixels)
    import torch
    from torchvision.transforms import InterpolationMode, v2

    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    tensor = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
    tensor = v2.CenterCrop(size)(v2.Resize(resize, interpolation=mode, antialias=True)(tensor))
    return tensor.float().numpy()
