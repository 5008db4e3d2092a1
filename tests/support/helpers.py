"""Builders of tiny generated datasets (a few 16 px images), so that tests stay fast."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TRASHNET = SHARED_DATA / "trashnet-rgb-112.tar.gz"
CLASSES = ("glass", "metal", "paper")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(*items: str) -> list[str]:
    """["-o", item, "-o", item, ...] for the CLI."""
    return [x for item in items for x in ("-o", item)]


# The smallest training that still runs every step: 32 px, batch 4, a learning rate that does not diverge.
TINY_TRAIN = (
    "train.model=PP-LCNet_x0_5",
    "train.image_size=32",
    "train.batch_size=4",
    "train.learning_rate=0.01",
    "dataset.num_workers=1",
    "train.cache_mb=1",
)


def write_image(path: Path, seed: int, size: int = 16, mode: str = "RGB", fmt: str | None = None) -> Path:
    """A distinct image per seed (random pixels), so no two test images share content."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").convert(mode).save(path, format=fmt)
    return path


def folder_dataset(root: Path, per_class: int = 5) -> Path:
    """One folder per class, JPEG images."""
    seed = 0
    for name in CLASSES:
        for i in range(per_class):
            write_image(root / name / f"{name}_{i}.jpg", seed)
            seed += 1
    return root


def cls_dataset(root: Path, per_class: int = 5, val_per_class: int = 2) -> Path:
    """A valid ClsDataset: label.txt, train.txt, val.txt and images/<class>/*.jpg."""
    train, val = [], []
    seed = 1000
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            rel = f"images/{name}/{name}_{i}.jpg"
            write_image(root / rel, seed)
            seed += 1
            (val if i < val_per_class else train).append(f"{rel} {label}\n")
    (root / "label.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CLASSES)))
    (root / "train.txt").write_text("".join(train))
    (root / "val.txt").write_text("".join(val))
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


RELIABILITY_LOG = Path(__file__).resolve().parents[2] / "bench" / "out" / "reliability.jsonl"


def record_figure(kind: str, tried: int, failed: int = 0, notes: str = "") -> None:
    """One row of the reliability table that the suite writes (bench/out/reliability.md, see conftest):
    `tried` cases of `kind`, of which `failed` were not handled as promised."""
    import json

    RELIABILITY_LOG.parent.mkdir(parents=True, exist_ok=True)
    row = {"kind": kind, "tried": tried, "handled": tried - failed, "failed": failed, "notes": notes}
    with open(RELIABILITY_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def tiny_project(root: Path, *extra: str) -> list[str]:
    """A tiny dataset under `root` and the -o overrides of a whole pipeline on it (its own MLflow store and
    Triton repository), for tests that run the `sortflow` commands as a user would."""
    dataset = cls_dataset(root / "data", per_class=8, val_per_class=3)
    return overrides(
        f"dataset.dir={dataset}",
        *TINY_TRAIN,
        f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
        "publish.repo=triton_repo",
        *extra,
    )


def captured_records(capture: Path, count: int, timeout: float = 20) -> list[dict]:
    """The capture's records, oldest first, once `count` are written (the capture writes in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for path in sorted((capture / "records").glob("*.jsonl")) for line in path.open()]
        if len(lines) >= count or time.monotonic() > deadline:
            return sorted((json.loads(line) for line in lines), key=lambda r: r["time"])
        time.sleep(0.1)
