"""The bytes model's torch-free preprocessing against the evaluation transform, on real photos in every form a
client sends: JPEG, PNG, EXIF-rotated, grayscale, 16-bit, CMYK, and 1080p camera frames (decoded at reduced
size by the JPEG decoder). The tolerances are the ones its docstring and the README state."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.data.images import load_rgb
from components.data.loader import transform
from components.model.contract import DataConfig
from components.triton_models.preprocess import DRAFT_MARGIN, preprocess

EXACT = (2.0, 0.02)  # max and mean absolute difference, in 0-255 levels, without DCT scaling
DRAFT = (3.0, 0.3)  # with it (1080p JPEG frames, and 512 px photos for a 64 px model)


def _photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {n: getattr(skimage.data, n)() for n in ("coffee", "chelsea", "astronaut", "rocket")}


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _variants(photo: np.ndarray) -> dict[str, bytes]:
    image = Image.fromarray(photo)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the viewer turns it upright
    deep = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)  # 16-bit grey
    frame = image.resize((1920, 1080), Image.Resampling.BICUBIC)
    return {
        "jpeg": _encode(image, "JPEG", quality=90),
        "png": _encode(image, "PNG"),
        "exif-rotated jpeg": _encode(image, "JPEG", quality=90, exif=exif),
        "grayscale jpeg": _encode(image.convert("L"), "JPEG"),
        "16-bit png": _encode(deep, "PNG"),
        "cmyk jpeg": _encode(image.convert("CMYK"), "JPEG"),
        "1080p jpeg frame": _encode(frame, "JPEG", quality=90),
        "1080p png frame": _encode(frame, "PNG"),
    }


def _tolerance(data: bytes, resize: int) -> tuple[float, float]:
    """DRAFT where the JPEG decoder scales the image down (a short side of 2 x DRAFT_MARGIN x resize or more)."""
    with Image.open(io.BytesIO(data)) as image:
        scaled = image.format == "JPEG" and min(image.size) >= 2 * DRAFT_MARGIN * resize
    return DRAFT if scaled else EXACT


def _evaluation(data: bytes, cfg: DataConfig, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "image"
    path.write_bytes(data)
    pixels = torch.from_numpy(np.array(load_rgb(str(path)))).permute(2, 0, 1)
    return transform(cfg, training=False, normalize=False)(pixels).numpy()


@pytest.mark.parametrize(("size", "interpolation"), [(64, "bicubic"), (224, "bicubic"), (112, "bilinear")])
def test_bytes_model_pixels_match_the_evaluation_transform(size: int, interpolation: str, tmp_path: Path) -> None:
    cfg = DataConfig(size, (0.5,) * 3, (0.5,) * 3, 0.875, interpolation)
    for name, photo in _photos().items():
        for kind, data in _variants(photo).items():
            max_diff, mean_diff = _tolerance(data, cfg.resize_size)
            got = preprocess(data, size, cfg.resize_size, interpolation)
            want = _evaluation(data, cfg, tmp_path)
            assert got.shape == want.shape == (3, size, size) and got.dtype == np.float32
            diff = np.abs(got - want)
            assert diff.max() <= max_diff and diff.mean() <= mean_diff, (name, kind, diff.max(), diff.mean())


def test_the_backend_process_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, io; sys.path.insert(0, 'components/triton_models'); from preprocess import preprocess; "
        "from PIL import Image; b = io.BytesIO(); Image.new('RGB', (640, 480)).save(b, 'JPEG'); "
        "preprocess(b.getvalue(), 64, 73, 'bicubic'); print('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True).stdout == "False\n"
