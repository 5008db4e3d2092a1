"""From scratch against a peer at equal wall time, side by side in one run (issue 13, part 5).

Ultralytics YOLOv8n-cls from scratch, as a new user runs it (`yolo classify train model=yolov8n-cls.yaml
imgsz=112 epochs=18`, its defaults otherwise), and `sortflow train` with its defaults (no params.yaml:
SGD at 0.1, the weight average) for PP-LCNet_x1_0 from scratch at 112 px, on the same TrashNet
split (seed 42, 80/20): best val top-1 and wall time each. sortflow also runs at half its epochs, to show
that more epochs do not make its result worse.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_train import OUT, dataset, sortflow_train  # noqa: E402

YOLO = str(Path(sys.executable).parent / "yolo")
PEER_EPOCHS, OUR_EPOCHS, OUR_SIZE = 18, 40, 112  # ours: about the peer's wall time on this machine


def yolo_folders(root: Path) -> Path:
    """The split as Ultralytics' classification layout (train/<class>/, val/<class>/), hard-linked."""
    out = OUT / "yolo-trashnet"
    classes = [line.split(" ", 1)[1] for line in (root / "label.txt").read_text().splitlines()]
    for part in ("train", "val"):
        for line in (root / f"{part}.txt").read_text().splitlines():
            rel, label = line.rsplit(" ", 1)
            dst = out / part / classes[int(label)] / Path(rel).name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(root / rel, dst)
    return out


def peer(folders: Path) -> tuple[float, float, list[float]]:
    """(best val top-1, wall seconds, top-1 per epoch) of YOLOv8n-cls from scratch."""
    env = {**os.environ, "YOLO_CONFIG_DIR": str(OUT / "yolo-config"), "YOLO_OFFLINE": "1"}
    command = [
        YOLO, "classify", "train", "model=yolov8n-cls.yaml", f"data={folders}", "imgsz=112", f"epochs={PEER_EPOCHS}",
        "device=cpu", f"project={OUT / 'yolo-runs'}", "name=scratch", "exist_ok=True", "plots=False",
    ]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=OUT)
    wall = time.perf_counter() - began
    with (OUT / "yolo-runs/scratch/results.csv").open() as f:
        curve = [float(row["metrics/accuracy_top1"]) for row in csv.DictReader(f)]
    return max(curve), wall, curve


def ours(root: Path, epochs: int) -> tuple[float, float, list[float]]:
    r = sortflow_train(
        root, f"scratch{epochs}", "train.model=PP-LCNet_x1_0", "train.pretrained=none",
        f"train.image_size={OUR_SIZE}", f"train.epochs={epochs}",
    )  # fmt: skip
    return r["models"]["best"]["score"], r["wall_seconds"], [h["val_top1"] for h in r["history"]]


def main() -> None:
    root = dataset()
    top1, wall, curve = peer(yolo_folders(root))
    print(
        f"YOLOv8n-cls from scratch, {PEER_EPOCHS} epochs at 112 px (Ultralytics rounds to 128): "
        f"best {top1:.4f} in {wall:.0f} s; per epoch {[round(x, 3) for x in curve]}",
        flush=True,
    )
    rows = {}
    for epochs in (OUR_EPOCHS // 2, OUR_EPOCHS):
        rows[epochs] = ours(root, epochs)
        best, seconds, mine = rows[epochs]
        print(
            f"sortflow PP-LCNet_x1_0 from scratch, {epochs} epochs at {OUR_SIZE} px: best {best:.4f} in "
            f"{seconds:.0f} s; per epoch {[round(x, 3) for x in mine]}",
            flush=True,
        )
    best, seconds, _ = rows[OUR_EPOCHS]
    half = rows[OUR_EPOCHS // 2][0]
    print(
        f"\nsortflow / peer top-1: {best / top1:.3f} (target >= 1.0) at wall time {seconds:.0f} s vs {wall:.0f} s "
        f"({seconds / wall:.2f}x); {OUR_EPOCHS} vs {OUR_EPOCHS // 2} epochs: {best:.4f} vs {half:.4f}"
    )


if __name__ == "__main__":
    main()
