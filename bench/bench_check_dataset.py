"""check-dataset on 10,000 images of 112 px: the full `sortflow check-dataset` command vs. a bare loop.

The baseline is the least work any full check must do: decode every listed image once, serially, in
one process (`Image.open(p).load()`). sortflow does that plus hashing, the GX suite, demo images,
the histogram and Data Docs. Both run side by side in this one process; the ratio is what is reported.

Images come from TrashNet (../shared/data) in four orientations, re-encoded as JPEG so each is
distinct; without the archive, seeded synthetic photos of the same size are used.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.report import Result, record
from components.core.fsutil import file_digest
from components.data.cls_dataset import list_file, read_list, write_labels, write_list
from components.data.partition import stratified_split

REPO = Path(__file__).resolve().parents[1]

TRASHNET = REPO.parent / "shared" / "data" / "trashnet-rgb-112.tar.gz"
VARIANTS = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)


def _sources(workdir: Path) -> list[tuple[str, Image.Image]]:
    if TRASHNET.is_file():
        with tarfile.open(TRASHNET) as tar:
            members = sorted((m for m in tar.getmembers() if m.name.endswith(".jpg")), key=lambda m: m.name)
            return [
                (Path(m.name).parent.name, Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
                for m in members
            ]
    rng = np.random.default_rng(0)
    out = []
    for i in range(2500):
        base = rng.integers(0, 256, size=(3,), dtype=np.uint8)
        noise = rng.integers(0, 64, size=(84, 112, 3), dtype=np.uint8)
        out.append((f"class{i % 6}", Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))))
    return out


def build(root: Path, n: int) -> Path:
    if (root / "label.txt").is_file() and sum(len(read_list(root / list_file(s))) for s in ("train", "val")) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = _sources(root)
    classes = sorted({c for c, _ in sources})
    rows = []
    content = {}
    for variant in VARIANTS:
        for i, (cls, image) in enumerate(sources):
            if len(rows) == n:
                break
            rel = f"images/{cls}/{i:05d}_{len(rows):05d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (image if variant is None else image.transpose(variant)).save(root / rel, quality=90)
            rows.append((rel, classes.index(cls)))
            content[rel] = file_digest(root / rel)
    write_labels(root / "label.txt", classes)
    train, val = stratified_split(rows, 80, 20, seed=0, content=content)
    write_list(root / "train.txt", train)
    write_list(root / "val.txt", val)
    return root


def bare_decode(root: Path) -> float:
    start = time.perf_counter()
    for split in ("train", "val"):
        for e in read_list(root / list_file(split)):
            with Image.open(root / e.path) as im:
                im.load()
    return time.perf_counter() - start


def sortflow_check(root: Path, output: Path) -> tuple[float, bool]:
    start = time.perf_counter()
    run = subprocess.run(
        [str(Path(sys.executable).parent / "sortflow"), "check-dataset", str(root), "-o", f"dataset.output={output}"],
        capture_output=True,
    )
    return time.perf_counter() - start, run.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    root = build(args.workdir / f"check{args.images}", args.images)
    source = "TrashNet x4 orientations" if TRASHNET.is_file() else "synthetic"
    bare = bare_decode(root)  # also warms the page cache for both runs
    bare = min(bare, bare_decode(root))
    runs = [sortflow_check(root, args.workdir / "check_output") for _ in range(2)]
    ours, passed = min(t for t, _ in runs), all(ok for _, ok in runs)
    record(
        Result(
            "check_dataset",
            f"check-dataset: {args.images:,} images of 112 px",
            f"{args.images:,} distinct JPEG images of 112 px ({source}), 6 classes, split 80/20. The baseline is "
            "the least work any full check must do: decode every listed image once, serially, in one process. "
            "The sortflow figure is the whole `sortflow check-dataset` command as a user runs it (start-up, "
            "imports, hashing, the Great Expectations suite, Data Docs, demo images, histogram). Best of two "
            f"runs each; the check passed: {passed}.",
            ["run", "wall time (s)", "images/s"],
            [
                ["bare serial decode loop (baseline)", f"{bare:.1f}", f"{args.images / bare:,.0f}"],
                ["`sortflow check-dataset` (whole command)", f"{ours:.1f}", f"{args.images / ours:,.0f}"],
            ],
            [
                f"Ratio sortflow / baseline: {ours / bare:.2f}x, mostly fixed cost (imports, Data Docs).",
                f"Target: the whole command under 60 s: {'met' if ours < 60 else 'not met'}.",
            ],
        )
    )


if __name__ == "__main__":
    main()
