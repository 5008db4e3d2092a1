"""What the model sees, on TrashNet (../shared/data), side by side in one run.

1. A new kind of object. EfficientNet-Lite0 fine-tuned with params.trashnet.yaml on five TrashNet classes, with
   cardboard held out and each class split 70/15/15 into train, val (the reference) and unseen images (the
   ordinary traffic), served by the bundled Triton with capture on. Windows of 200 requests: 20 of unseen
   images alone, 10 with 30% cardboard; each window checked by the monitor's tests (`drift_tests`, as
   `sortflow monitor` runs them), with the embedding tests and without them.
2. The novelty scores that the server captured: AUROC of cardboard images against the unseen ones.
3. Cost on the served path: `<model>_bytes` requests/s at concurrency 4 on the 112 px JPEGs, capture at rate 1,
   with the embedder and novelty score on, and the same version without its embedder files; alternating rounds.
4. `sortflow monitor` on 10,000 captured requests with embeddings: wall time of the command.
5. Heatmaps: Grad-CAM time per image at 112 px, and the randomisation check (rank correlation of the maps with
   those of randomly initialised weights).
6. The audit: 5% of train labels flipped (seeded) and 40 val images planted into train as re-encoded (JPEG
   quality 60) or resized (90%) copies; a model fine-tuned on that data with params.trashnet.yaml, then
   `sortflow dataset audit`: label-issue recall and precision against the flipped images (at cleanlab's cut,
   and down its ranking to recall 0.8), the share of planted copies found, wall time.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import bench_monitor
from bench.bench_monitor import captured, grpc_port, load, server_ports
from bench.bench_train import OUT, RECIPE, SORTFLOW, dataset
from bench.report import Result, record
from components.core.config import load_params
from tests.support.overrides import without_published

WORK = OUT / "see"
HELD_OUT, WINDOW, SHARE = "cardboard", 200, 0.3
ORDINARY, NEW_KIND = 20, 10
VERSION_DIR = "sortflow-classifier/1"
EMBEDDING_TESTS = ("embedding drift", "novel images share")
ROUNDS = 9


def sortflow(*args: str, cwd: Path = WORK) -> None:
    bench_monitor.sortflow(*args, cwd=cwd)


def listed(root: Path, split: str) -> list[tuple[str, int]]:
    lines = (root / f"{split}.txt").read_text().splitlines()
    return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in lines]


def without_class(root: Path, name: str, target: Path) -> list[Path]:
    """`root` without class `name`, in `target` (images hard-linked, classes renumbered), each class split
    seeded into train (70%), val (15%: the reference profile) and live.txt (15%: the ordinary traffic of the
    windows, which neither training nor export sees); the held-out class's files."""
    labels = [line.split(" ", 1)[1] for line in (root / "label.txt").read_text().splitlines()]
    kept = [label for label in labels if label != name]
    everything = [item for split in ("train", "val") for item in listed(root, split)]
    held = [root / path for path, label in everything if labels[label] == name]
    if (target / "label.txt").is_file():
        return held
    rng = random.Random(26)
    lists: dict[str, list[str]] = {"train": [], "val": [], "live": []}
    for new, label in enumerate(kept):
        paths = sorted(path for path, old in everything if labels[old] == label)
        rng.shuffle(paths)
        cut = [round(len(paths) * 0.7), round(len(paths) * 0.85)]
        for split, part in zip(lists, (paths[: cut[0]], paths[cut[0] : cut[1]], paths[cut[1] :]), strict=True):
            for path in part:
                (target / path).parent.mkdir(parents=True, exist_ok=True)
                os.link(root / path, target / path)
                lists[split].append(f"{path} {new}\n")
    for split, lines in lists.items():
        (target / f"{split}.txt").write_text("".join(lines))
    (target / "label.txt").write_text("".join(f"{i} {label}\n" for i, label in enumerate(kept)))
    return held


def setups(data: Path) -> dict[str, list[str]]:
    """Train, evaluate, export and register once; publish twice with capture on (the second repository's version
    without its embedder files, as a version exported before them); serve both."""
    common = [*recipe(data, WORK), "publish.capture_rate=1"]
    found = {}
    for name in ("embeddings", "plain"):
        items = [*common, f"publish.repo={WORK / ('repo_' + name)}", f"serve.workdir={WORK / ('serve_' + name)}"]
        items += [f"publish.capture_dir={WORK / ('capture_' + name)}", f"monitor.output={WORK / 'monitor'}"]
        items += server_ports()
        found[name] = ["--params", str(RECIPE), *(x for item in items for x in ("-o", item))]
    if not (WORK / "output/export/embedder.onnx").is_file():
        for step in ("train", "evaluate", "export", "register"):
            sortflow(step, *found["embeddings"])
    for name, args in found.items():
        shutil.rmtree(WORK / f"capture_{name}", ignore_errors=True)
        shutil.rmtree(WORK / "repo_plain", ignore_errors=True)  # its version lacks files: never published over
        sortflow("publish", *args)
        if name == "plain":
            for file in ("embedder.onnx", "embeddings.npz"):
                (WORK / f"repo_plain/{VERSION_DIR}/{file}").unlink()
        sortflow("serve", *without_published(args))
    return found


def recipe(data: Path, work: Path) -> list[str]:
    """Overrides that train with params.trashnet.yaml (`--params`) on `data` as it is, tracked under `work`."""
    tracking = f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db"
    return [f"dataset.dir={data}", "split.enable=false", "split.output=", tracking]


def throughput(found: dict[str, list[str]], files: list[bytes]) -> dict[str, list[float]]:
    """Requests/s of each server in nine rounds, the order alternating from round to round (after a warm-up)."""
    for args in found.values():
        load(grpc_port(args), files[:200])
    rates: dict[str, list[float]] = {name: [] for name in found}
    for n in range(ROUNDS):
        for name in sorted(found, reverse=bool(n % 2)):
            rates[name].append(load(grpc_port(found[name]), files))
    return rates


def windows(val: list[Path], held: list[Path]) -> list[tuple[str, list[Path]]]:
    rng = random.Random(0)
    plan = [("known classes", rng.sample(val, WINDOW)) for _ in range(ORDINARY)]
    new = int(WINDOW * SHARE)
    for _ in range(NEW_KIND):
        mix = rng.sample(held, new) + rng.sample(val, WINDOW - new)
        rng.shuffle(mix)
        plan.append((f"{SHARE:.0%} {HELD_OUT} (a class never trained)", mix))
    return plan


def detection(args: list[str], live: list[Path], held: list[Path]) -> tuple[dict[str, list[tuple[bool, bool]]], dict]:
    """Each window's verdict with and without the embedding tests, and every captured novelty score by sha."""
    from components.traffic import drift
    from components.traffic.windows import drift_tests, live_table, load_profile, served_window

    params = load_params(RECIPE, args[3::2])
    profile = load_profile(params, "1")
    folder = WORK / "capture_embeddings"
    verdicts: dict[str, list[tuple[bool, bool]]] = {}
    scores: dict[str, float] = {}
    for kind, paths in windows(live, held):
        before, start = captured(folder), time.time()
        load(grpc_port(args), [p.read_bytes() for p in paths])
        while captured(folder) < before + len(paths):
            time.sleep(0.05)
        hours = (time.time() - start + 0.01) / 3600
        monitor = dataclasses.replace(params.monitor, window_hours=hours)
        _, _, served = served_window(dataclasses.replace(params, monitor=monitor))
        found = drift_tests(live_table(served, profile["labels"]), profile, params)
        plain = {f.check: (f.statistic, f.p_value, f.detail) for f in found if f.check not in EMBEDDING_TESTS}
        without = drift.findings(plain, params.monitor.alpha)
        verdicts.setdefault(kind, []).append((any(f.drift for f in found), any(f.drift for f in without)))
        scores.update({s.sha: s.novelty for s in served})
        print(f"{kind:40} {len(served)}: {', '.join(f.check for f in found if f.drift) or 'no drift'}")
    return verdicts, scores


def auroc(scores: dict[str, float], val: list[Path], held: list[Path]) -> float:
    from sklearn.metrics import roc_auc_score

    from components.triton_models.capture import content_hash

    hashes = [(content_hash(p.read_bytes()), y) for y, paths in ((0, val), (1, held)) for p in paths]
    pairs = [(scores[sha], y) for sha, y in hashes if sha in scores]
    return float(roc_auc_score([y for _, y in pairs], [s for s, _ in pairs]))


def monitor_10k(args: list[str], val: list[Path], data: Path) -> float:
    """10,000 captured requests of val images with their real probabilities, embeddings and novelty scores (as
    the server computes them); wall time of `sortflow monitor` on them."""
    from components.model.onnx_session import onnx_embeddings, onnx_session, raw_images
    from components.triton_models import novelty
    from components.triton_models.capture import Capture

    export = json.loads((WORK / "output/export/export_result.json").read_text())
    pixels, _ = raw_images(data, "val", export["data_config"])
    probabilities, features = onnx_embeddings(onnx_session(WORK / "output/export/embedder.onnx"), pixels)
    folder = WORK / "capture10k"
    shutil.rmtree(folder, ignore_errors=True)
    scored = partial(novelty.describe, reference=novelty.load_reference(str(WORK / "output/export/embeddings.npz")))
    capture = Capture(str(folder), 1.0, 10**10, "sortflow-classifier", "1", describe=scored)
    rng = random.Random(1)
    for i in range(10_000):
        j = rng.randrange(len(val))
        capture.submit(val[j].read_bytes(), probabilities[j].tolist(), seen=features[j])
        if i % 400 == 399:
            while capture.captured + capture.dropped < i + 1:
                time.sleep(0.01)
    while capture.captured + capture.dropped < 10_000:
        time.sleep(0.01)
    extra = ["-o", f"publish.capture_dir={folder}", "-o", "monitor.window_hours=1"]
    extra += ["-o", f"publish.repo={WORK / 'repo_embeddings'}"]
    began = time.perf_counter()
    run = subprocess.run([SORTFLOW, "monitor", *args, *extra], cwd=WORK, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    assert run.returncode in (0, 3), run.stderr[-2000:]
    return seconds


def heatmap_figures(data: Path) -> tuple[float, float]:
    """Milliseconds per image of Grad-CAM at 112 px (batches of 16, after a warm-up), and the mean rank
    correlation between the maps of the trained weights and of randomly initialised ones."""
    import timm
    import torch
    from scipy.stats import spearmanr

    from components.model.checkpoints import load_checkpoint
    from components.model.heatmaps import Heatmaps
    from components.model.onnx_session import onnx_probabilities, onnx_session, raw_images

    ckpt = load_checkpoint(WORK / "output/export/model.pt")
    pixels, _ = raw_images(data, "val", ckpt["data_config"], limit=96)
    classes = onnx_probabilities(onnx_session(WORK / "output/export/model.onnx"), pixels).argmax(1).tolist()
    heatmaps = Heatmaps(ckpt)
    heatmaps.maps(pixels[:16], classes[:16])
    began = time.perf_counter()
    trained = heatmaps.maps(pixels[16:], classes[16:])
    per_image = (time.perf_counter() - began) / (len(pixels) - 16) * 1000
    torch.manual_seed(0)
    fresh = timm.create_model(ckpt["timm_name"], num_classes=ckpt["num_classes"]).state_dict()
    randomised = Heatmaps({**ckpt, "model": fresh}).maps(pixels[16:], classes[16:])
    pairs = zip(trained, randomised, strict=True)
    rank = [spearmanr(a.ravel(), b.ravel()).statistic if b.std() and a.std() else 0.0 for a, b in pairs]
    return per_image, float(np.mean(rank))


def noisy_dataset(root: Path, target: Path) -> tuple[set[str], dict[str, str]]:
    """TrashNet with 5% of train labels flipped and 40 val images planted in train as altered copies: the
    flipped paths, and each planted path with the val path it copies."""
    rng = random.Random(26)
    labels = (root / "label.txt").read_text().splitlines()
    train, val = listed(root, "train"), listed(root, "val")
    flipped = set(rng.sample(range(len(train)), round(0.05 * len(train))))
    lines, flips = [], set()
    for i, (path, label) in enumerate(train):
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        os.link(root / path, target / path)
        if i in flipped:
            label = rng.choice([c for c in range(len(labels)) if c != label])
            flips.add(path)
        lines.append(f"{path} {label}\n")
    planted = {}
    for n, (path, label) in enumerate(rng.sample(val, 40)):
        with Image.open(root / path) as im:
            im = im.convert("RGB")
            if n % 2:
                im = im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.LANCZOS)
            buffer = io.BytesIO()
            im.save(buffer, format="JPEG", quality=60 if n % 2 == 0 else 90)
        copy = f"images/planted/copy_{n}.jpg"
        (target / copy).parent.mkdir(parents=True, exist_ok=True)
        (target / copy).write_bytes(buffer.getvalue())
        lines.append(f"{copy} {label}\n")
        planted[copy] = path
    for path, _ in val:
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        os.link(root / path, target / path)
    (target / "train.txt").write_text("".join(lines))
    shutil.copyfile(root / "val.txt", target / "val.txt")
    shutil.copyfile(root / "label.txt", target / "label.txt")
    return flips, planted


def audit_figures(root: Path) -> dict[str, float]:
    target = WORK / "noisy"
    shutil.rmtree(target, ignore_errors=True)
    flips, planted = noisy_dataset(root, target)
    items = [*recipe(target, WORK / "noisy_run"), f"train.output={WORK / 'noisy_run/train'}"]
    args = ["--params", str(RECIPE), *(x for item in [*items, f"audit.output={WORK / 'audit'}"] for x in ("-o", item))]
    (WORK / "noisy_run").mkdir(exist_ok=True)
    if not (WORK / "noisy_run/train/best.pt").is_file():
        sortflow("train", *args, cwd=WORK / "noisy_run")
    began = time.perf_counter()
    sortflow("dataset", "audit", *args, cwd=WORK / "noisy_run")
    seconds = time.perf_counter() - began
    ranked = [row["file"].split(" ", 1)[1] for row in csv.DictReader((WORK / "audit/label_issues.csv").open())]
    issues = set(ranked)
    hits_down = np.cumsum([path in flips for path in ranked])
    top = int(np.argmax(hits_down >= 0.8 * len(flips))) + 1 if hits_down[-1] >= 0.8 * len(flips) else len(ranked)
    rows = csv.DictReader((WORK / "audit/near_duplicates.csv").open())
    pairs = [(row["a"].split(" ", 1)[1], row["b"].split(" ", 1)[1]) for row in rows]
    found = {copy for copy, original in planted.items() if (copy, original) in pairs or (original, copy) in pairs}
    hits = len(issues & flips)
    return {
        "flipped": len(flips),
        "flagged": len(issues),
        "recall": hits / len(flips),
        "precision": hits / max(len(issues), 1),
        "top": top,
        "precision_at_08": float(hits_down[top - 1] / top) if hits_down[-1] >= 0.8 * len(flips) else 0.0,
        "planted": len(planted),
        "copies_found": len(found) / len(planted),
        "seconds": seconds,
    }


def main() -> None:
    root = dataset()
    WORK.mkdir(parents=True, exist_ok=True)
    five = WORK / "five_classes"
    held = without_class(root, HELD_OUT, five)
    val = [five / path for path, _ in listed(five, "val")]
    live = [five / path for path, _ in listed(five, "live")]
    found = setups(five)
    try:
        rates = throughput(found, [p.read_bytes() for p in live] * 2)
        verdicts, scores = detection(found["embeddings"], live, held)
        seconds = monitor_10k(found["embeddings"], val, five)
    finally:
        for args in found.values():
            sortflow("serve", "--stop", *without_published(args))
    area = auroc(scores, live, held)
    per_image, rank = heatmap_figures(five)
    audit = audit_figures(root)
    figures = {"rates": rates, "verdicts": verdicts, "auroc": area, "monitor_10k": seconds}
    report({**figures, "heatmap_ms": per_image, "rank": rank, "audit": audit}, (len(val), len(live), len(held)))


def report(figures: dict[str, Any], sizes: tuple[int, int, int]) -> None:
    """BENCHMARKS.md's table and notes from the figures (also kept in bench/out/see/results.json)."""
    (WORK / "results.json").write_text(json.dumps(figures, indent=2))
    rates, verdicts, area, audit = figures["rates"], figures["verdicts"], figures["auroc"], figures["audit"]
    seconds, per_image, rank = figures["monitor_10k"], figures["heatmap_ms"], figures["rank"]
    med = {name: statistics.median(v) for name, v in rates.items()}
    ratio = med["embeddings"] / med["plain"]
    rows = []
    for kind, hits in verdicts.items():
        rows.append([kind, len(hits), sum(h[0] for h in hits), sum(h[1] for h in hits)])
    ordinary, new = verdicts["known classes"], next(v for k, v in verdicts.items() if k != "known classes")
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    record(
        Result(
            "see",
            "What the model sees: a new kind of object, novelty, the served path, heatmaps, the audit",
            f"EfficientNet-Lite0 fine-tuned with params.trashnet.yaml on five TrashNet classes, {HELD_OUT} held out, "
            f"each class split 70/15/15 into train, val (the reference profile) and unseen images of the known "
            f"classes ({sizes[0]} val, {sizes[1]} unseen, {sizes[2]} {HELD_OUT}); served by the bundled Triton with "
            f"capture at rate 1. Windows of {WINDOW} requests: unseen images of the known classes alone, or with "
            f"{SHARE:.0%} {HELD_OUT}; each window checked by the monitor's tests with the embedding tests (MMD of "
            "the embeddings, share of novel images) and without them.",
            ["windows", "count", "drift reported", "drift reported without the embedding tests"],
            rows,
            [
                f"New kind of object: {sum(h[0] for h in new)} of {len(new)} windows flagged (target: at least 9 of "
                f"10: {met(sum(h[0] for h in new) >= 9)}); without the embedding tests {sum(h[1] for h in new)}.",
                f"Known classes alone: {sum(h[0] for h in ordinary)} false alarms in {len(ordinary)} (target: at "
                f"most 1: {met(sum(h[0] for h in ordinary) <= 1)}).",
                f"Novelty score AUROC, {HELD_OUT} against unseen images of the known classes, from the scores the "
                f"server captured: {area:.3f} "
                f"(target: at least 0.85: {met(area >= 0.85)}).",
                f"`<model>_bytes` at concurrency 4, capture at rate 1: {med['embeddings']:.0f} requests/s with "
                f"embeddings and novelty, {med['plain']:.0f} without "
                f"({', '.join(f'{x:.0f}' for x in rates['embeddings'])} against "
                f"{', '.join(f'{x:.0f}' for x in rates['plain'])}; {ROUNDS} rounds, the order alternating, medians): "
                f"{ratio:.2f}x "
                f"(target: at least 0.9x: {met(ratio >= 0.9)}).",
                f"`sortflow monitor` on 10,000 captured requests with embeddings: {seconds:.1f} s (target: at most "
                f"60 s: {met(seconds <= 60)}).",
                f"Grad-CAM heatmaps at 112 px: {per_image:.0f} ms per image (target: at most 100 ms: "
                f"{met(per_image <= 100)}); rank correlation with the maps of randomly initialised weights "
                f"{rank:.2f} (the maps follow the weights).",
                f"Audit of TrashNet with {audit['flipped']} train labels flipped (5%) and {audit['planted']} altered "
                f"val copies planted in train, the model trained on it with params.trashnet.yaml: cleanlab flags "
                f"{audit['flagged']} images, recall {audit['recall']:.2f} at precision {audit['precision']:.2f}; "
                f"down its ranking, the first {audit['top']} reach recall 0.8 at precision "
                f"{audit['precision_at_08']:.2f} "
                f"(target: recall 0.8 at precision 0.6: {met(audit['precision_at_08'] >= 0.6)}); copies found "
                f"{audit['copies_found']:.0%} (target: 95%: {met(audit['copies_found'] >= 0.95)}); "
                f"`sortflow dataset audit` {audit['seconds']:.0f} s (target: at most 120 s: "
                f"{met(audit['seconds'] <= 120)}).",
            ],
        )
    )


if __name__ == "__main__":
    main()
