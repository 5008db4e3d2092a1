"""Image decoding shared by the dataset checks, training, export, evaluation and prediction.

This module imports only Pillow, so process-pool workers that import it start fast.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps


def probe_image(path: str) -> dict[str, Any]:
    """Decode the whole image (not only its header) and describe it.

    The hash covers the decoded pixels, mode and size, so the same picture saved twice, or as
    PNG and BMP, has one hash; that is what leaks between train and val.
    """
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
            digest = hashlib.blake2b(im.tobytes(), digest_size=16)
            digest.update(f"{im.mode}:{im.width}x{im.height}".encode())
            return {
                "readable": True,
                "error": None,
                "width": im.width,
                "height": im.height,
                "mode": im.mode,
                "format": fmt,
                "hash": digest.hexdigest(),
            }
    except Exception as exc:  # every decoder failure means the same thing here: not a usable image
        return {"readable": False, "error": f"{type(exc).__name__}: {exc}"}


def decode_all(fn: Callable[[str], Any], paths: list[str], workers: int, min_for_pool: int = 64) -> Iterator[Any]:
    """`fn` over every path, in order: in a process pool of `workers` (0: one per core) when there are at least
    `min_for_pool` paths (below that, starting the workers costs more than it saves), else here."""
    import os

    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(paths) < min_for_pool:
        yield from map(fn, paths)
        return
    # spawn, not fork: callers (Prefect, pytest) may run threads, and workers only need this module.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, min(128, len(paths) // (workers * 8)))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(fn, paths, chunksize=chunk)


def load_rgb(path: str) -> Image.Image:
    """Open an image upright (EXIF orientation applied) as 8-bit RGB, whatever its mode on disk."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I"):
            # 16-bit grey (PNG, TIFF): keep the top 8 bits; convert() would clip everything above 255.
            im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
        return im.convert("RGB")


def decode_for_training(job: tuple[str, int]) -> np.ndarray:
    """(path, max short side) -> an upright RGB uint8 array, downscaled if the short side is larger."""
    path, max_short_side = job
    image = load_rgb(path)
    short = min(image.size)
    if short > max_short_side:
        # Photos far larger than the training resolution only cost memory.
        scale = max_short_side / short
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def draw_lines(image: Image.Image, lines: list[str], min_side: int = 224) -> Image.Image:
    """The image (enlarged to `min_side` if smaller) with text lines on a red band at the top left."""
    from PIL import ImageDraw, ImageFont

    if min(image.size) < min_side:
        scale = min_side / min(image.size)
        resample = Image.Resampling.NEAREST if min(image.size) <= 64 else Image.Resampling.BICUBIC
        image = image.resize((round(image.width * scale), round(image.height * scale)), resample)
    else:
        image = image.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, min(image.size) // 14))
    y = 3
    for line in lines:
        _, _, right, bottom = draw.textbbox((6, y), line, font=font)
        draw.rectangle((3, y, right + 3, bottom + 4), fill=(255, 0, 0))
        draw.text((6, y), line, fill=(255, 255, 255), font=font)
        y = bottom + 6
    return image


STAT_SIZE = 128  # statistics are computed at this size, so that sharpness compares across resolutions
STATS = ("brightness", "contrast", "colourfulness", "sharpness", "aspect")


def image_stats(source: str | bytes) -> dict[str, Any]:
    """What the monitor compares between reference and live images: format, size, aspect ratio, brightness
    and contrast (mean and std of luma, 0-255), colourfulness (Hasler and Suesstrunk; 0 for grayscale) and
    sharpness (mean absolute Laplacian at STAT_SIZE px). `decoded` false, with the error, for a file that
    is not an image."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            fmt, (width, height) = im.format, im.size
            im.draft("RGB", (STAT_SIZE, STAT_SIZE))  # JPEG: decode at a reduced size directly (DCT scaling)
            im = ImageOps.exif_transpose(im)
            if (im.width > im.height) != (width > height):  # the EXIF orientation turned it
                width, height = height, width
            rgb = im.convert("RGB")
    except Exception as exc:  # every decoder failure means the same thing here: not a usable image
        return {"decoded": False, "error": f"{type(exc).__name__}: {exc}"}
    rgb.thumbnail((STAT_SIZE, STAT_SIZE))
    a = np.asarray(rgb, dtype=np.float32)
    luma = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    rg, yb = a[..., 0] - a[..., 1], 0.5 * (a[..., 0] + a[..., 1]) - a[..., 2]
    colourful = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    inner = luma[1:-1, 1:-1]
    laplacian = 4 * inner - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
    return {
        "decoded": True,
        "format": fmt,
        "width": width,
        "height": height,
        "aspect": width / height,
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "colourfulness": colourful,
        "sharpness": float(np.abs(laplacian).mean()) if laplacian.size else 0.0,
        "grayscale": colourful < 1.0,
    }
