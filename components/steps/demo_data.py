"""The bundled demo dataset: scikit-learn's handwritten digits (shipped in its wheel) as a ClsDataset.

Images are written as uncompressed BMP from integer arithmetic only, so the bytes (and the DVC hash in
data.dvc) are the same on every machine and every version of Pillow's codecs.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from components.core.errors import DatasetError
from components.core.fsutil import file_digest, staged_dir
from components.data.cls_dataset import LABEL_FILE, SPLITS, list_file, write_labels, write_list
from components.data.partition import DatasetWritten, SplitResult, stratified_split
from components.integrations.dvc_data import commit_if_unchanged

log = logging.getLogger(__name__)

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SCALE = 4  # 8x8 digits -> 32x32 images
# The demo is a fixed dataset: its split does not follow params.yaml, so data.dvc stays valid.
TRAIN_PERCENT, VAL_PERCENT, SEED = 80, 20, 0


def digit_image(pixels: np.ndarray) -> bytes:
    """8x8 intensities 0..16 -> dark ink on white paper, 32x32 RGB BMP."""
    gray = 255 - (pixels.astype(np.int64) * 255 // 16)
    gray = np.kron(gray, np.ones((SCALE, SCALE), dtype=np.int64)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB").save(buf, format="BMP")
    return buf.getvalue()


def build_demo_dataset(dst: str | Path, force: bool = False) -> SplitResult:
    """Write the demo dataset to `dst` whole (images, label.txt, train.txt, val.txt); DatasetError if it exists
    and is not empty, unless `force`."""
    from sklearn.datasets import load_digits

    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()) and not force:
        raise DatasetError(f"{dst}: already exists and is not empty; pass --force to rebuild it")
    digits = load_digits()
    rows = []
    content = {}
    with staged_dir(dst, replace=True) as stage:
        for i, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
            name = CLASS_NAMES[int(target)]
            rel = f"images/{name}/{name}_{i:04d}.bmp"
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(digit_image(pixels))
            rows.append((rel, int(target)))
            content[rel] = file_digest(stage / rel)
        write_labels(stage / LABEL_FILE, CLASS_NAMES)
        train, val = stratified_split(rows, TRAIN_PERCENT, VAL_PERCENT, SEED, content)
        for split, split_rows in zip(SPLITS, (train, val), strict=True):
            write_list(stage / list_file(split), split_rows)
    log.info("Demo dataset in %s: %d train, %d val, %d classes", dst, len(train), len(val), len(CLASS_NAMES))
    return SplitResult(train=len(train), val=len(val), classes=len(CLASS_NAMES))


def demo_step(dst: str | Path, force: bool = False) -> DatasetWritten:
    """`sortflow dataset demo`: build the demo dataset, and put it in the DVC cache when `<dst>.dvc` records
    exactly this content (so a fresh clone's `dvc status` is clean and `dvc push` works)."""
    result = build_demo_dataset(dst, force=force)
    commit_if_unchanged(dst)
    return DatasetWritten(f"Demo dataset in {dst}", result)
