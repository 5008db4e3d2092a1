"""From scratch against a peer at equal wall time, side by side in one run (issue 13, part 5).

Ultralytics YOLOv8n-cls from scratch, as a new user runs it (`yolo classify train model=yolov8n-cls.yaml
imgsz=112 epochs=18`, its defaults otherwise), and `sortflow train` with its defaults (no params.yaml:
SGD at 0.1, gradients clipped at 2.0, the weight average) for PP-LCNet_x1_0 from scratch at 112 px, on the
same TrashNet split (seed 42, 80/20): best val top-1 and wall time each. The ratio is taken at equal wall
time: sortflow's best val top-1 among the epochs that had ended when the peer's wall time ran out (its
cosine schedule unfinished, which only counts against it), since the two tools' speeds differ from one
processor to the next. sortflow also runs at half its epochs, to show that more epochs do not make its result worse.

`--seeds N` repeats both tools with the seeds 1 to N-1 (after the default seeds, Ultralytics' 0 and
sortflow's 42) and prints the mean of each: one run of 2,021 images from scratch moves by a few points with
the seed alone.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_train import OUT, dataset, sortflow_train
from bench.report import Result, record

REPO = Path(__file__).resolve().parents[1]

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


def peer(folders: Path, seed: int | None = None) -> tuple[float, float, list[float]]:
    """(best val top-1, wall seconds, top-1 per epoch) of YOLOv8n-cls from scratch (its own seed if None)."""
    name = "scratch" if seed is None else f"scratch-seed{seed}"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(OUT / "yolo-config"), "YOLO_OFFLINE": "1"}
    command = [
        YOLO, "classify", "train", "model=yolov8n-cls.yaml", f"data={folders}", "imgsz=112", f"epochs={PEER_EPOCHS}",
        "device=cpu", f"project={OUT / 'yolo-runs'}", f"name={name}", "exist_ok=True", "plots=False",
        *([] if seed is None else [f"seed={seed}"]),
    ]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=OUT)
    wall = time.perf_counter() - began
    with (OUT / "yolo-runs" / name / "results.csv").open() as f:
        curve = [float(row["metrics/accuracy_top1"]) for row in csv.DictReader(f)]
    return max(curve), wall, curve


def ours(root: Path, epochs: int, seed: int | None = None) -> tuple[float, float, list[float], list[float]]:
    """(best val top-1, wall seconds, top-1 per epoch, seconds from the command's start to each epoch's end)
    of `sortflow train` from scratch with its defaults."""
    r = sortflow_train(
        root, f"scratch{epochs}" + ("" if seed is None else f"-seed{seed}"), "train.model=PP-LCNet_x1_0",
        "train.pretrained=none", f"train.image_size={OUR_SIZE}", f"train.epochs={epochs}",
        *([] if seed is None else [f"train.seed={seed}"]),
    )  # fmt: skip
    history = r["history"]
    ends = list(itertools.accumulate(h["seconds"] for h in history))
    start_up = r["wall_seconds"] - ends[-1]  # imports, decoding the images, writing the outputs
    return (
        r["models"]["best"]["score"],
        r["wall_seconds"],
        [h["val_top1"] for h in history],
        [start_up + e for e in ends],
    )


def best_within(curve: list[float], ends: list[float], seconds: float) -> tuple[float, int]:
    """The best val top-1 among the epochs that had ended `seconds` after the command started, and how many
    epochs that was: what the run had to show at the peer's wall time (its schedule not yet finished)."""
    done = sum(end <= seconds for end in ends)
    return (max(curve[:done]) if done else 0.0), done


def other_seeds(root: Path, folders: Path, seeds: int, first: tuple[float, float]) -> str:
    """Both tools again with seeds 1 to `seeds` - 1; the mean top-1 of each over all its runs, sortflow's at
    the peer's wall time of the same seed."""
    theirs, mine = [first[0]], [first[1]]
    for seed in range(1, seeds):
        top1, wall, _ = peer(folders, seed)
        _, _, curve, ends = ours(root, OUR_EPOCHS, seed)
        theirs.append(top1)
        mine.append(best_within(curve, ends, wall)[0])
        print(f"seed {seed}: YOLOv8n-cls {top1:.4f}, sortflow {mine[-1]:.4f} within its {wall:.0f} s", flush=True)
    summary = (
        f"Over {seeds} seeds each: YOLOv8n-cls mean {sum(theirs) / seeds:.4f} (range {min(theirs):.4f}-"
        f"{max(theirs):.4f}), sortflow mean {sum(mine) / seeds:.4f} (range {min(mine):.4f}-{max(mine):.4f}); "
        f"ratio of the means at equal wall time {sum(mine) / sum(theirs):.3f}x."
    )
    print(summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="runs of each tool, each with its own seed")
    seeds = parser.parse_args().seeds
    root = dataset()
    folders = yolo_folders(root)
    top1, wall, curve = peer(folders)
    print(
        f"YOLOv8n-cls from scratch, {PEER_EPOCHS} epochs at 112 px (Ultralytics rounds to 128): "
        f"best {top1:.4f} in {wall:.0f} s; per epoch {[round(x, 3) for x in curve]}",
        flush=True,
    )
    rows = {}
    for epochs in (OUR_EPOCHS // 2, OUR_EPOCHS):
        rows[epochs] = ours(root, epochs)
        best, seconds, mine, _ = rows[epochs]
        print(
            f"sortflow PP-LCNet_x1_0 from scratch, {epochs} epochs at {OUR_SIZE} px: best {best:.4f} in "
            f"{seconds:.0f} s; per epoch {[round(x, 3) for x in mine]}",
            flush=True,
        )
    best, seconds, mine, ends = rows[OUR_EPOCHS]
    matched, done = best_within(mine, ends, wall)
    ratio = matched / top1
    notes = [
        f"sortflow / peer at equal wall time: {ratio:.3f}x. Target: at least 1.0: {'' if ratio >= 1 else 'not '}met."
    ]
    if seeds > 1:
        notes.append(other_seeds(root, folders, seeds, (top1, matched)))
    half = rows[OUR_EPOCHS // 2]
    record(
        Result(
            "peer",
            "From scratch against a peer at equal wall time: YOLOv8n-cls",
            "The same TrashNet split, from scratch: Ultralytics' YOLOv8n-cls with its defaults "
            f"({PEER_EPOCHS} epochs at 112 px) and `sortflow train` with PP-LCNet_x1_0 and sortflow's defaults at "
            f"{OUR_SIZE} px. sortflow's figure at equal wall time is its best val top-1 among the epochs that had "
            "ended when the peer's run ended.",
            ["run", "best val top-1", "wall time (s)"],
            [
                [f"YOLOv8n-cls, {PEER_EPOCHS} epochs", f"{top1:.4f}", f"{wall:.0f}"],
                [f"sortflow PP-LCNet_x1_0, {OUR_EPOCHS} epochs", f"{best:.4f}", f"{seconds:.0f}"],
                [
                    f"sortflow, the {done} of {OUR_EPOCHS} epochs ended within the peer's time",
                    f"**{matched:.4f}**",
                    f"{wall:.0f}",
                ],
                [f"sortflow PP-LCNet_x1_0, {OUR_EPOCHS // 2} epochs", f"{half[0]:.4f}", f"{half[1]:.0f}"],
            ],
            notes,
        )
    )


if __name__ == "__main__":
    main()
