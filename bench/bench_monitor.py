"""Monitoring benchmarks on TrashNet (../shared/data), side by side in one run.

1. Capture cost: requests/s on the encoded-image endpoint (`<model>_bytes`) at concurrency 4, with capture at
   rate 1.0 and off: two real Triton servers over the same model, measured in alternating rounds.
2. Detection: a model trained on TrashNet serves windows of 200 requests with capture on; the monitor's drift
   tests run on each window. In-distribution windows (val images in random order) against shifted ones
   (darker, grayscale, blurred photos, one class making up 80% of the traffic): the detection rate per kind.
3. `sortflow monitor` on a window of 10,000 captured requests: wall time of the command.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from bench.bench_train import OUT, SORTFLOW, dataset
from bench.report import Result, record
from components.core.config import load_params
from tests.support.overrides import without_published

REPO = Path(__file__).resolve().parents[1]

WORK = OUT / "monitor"
WINDOW, CONCURRENCY = 200, 4
IN_DISTRIBUTION, SHIFTED = 20, 10


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lite0_training(data: Path, work: Path, size: int, epochs: int) -> list[str]:
    """Overrides that fine-tune EfficientNet-Lite0 from its offline weights on `data`, tracked under `work`."""
    return [
        f"dataset.dir={data}",
        "split.enable=false",
        "split.output=",
        "train.model=EfficientNet-Lite0",
        "train.pretrained=imagenet",
        f"train.image_size={size}",
        f"train.epochs={epochs}",
        "train.learning_rate=0.05",
        f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db",
    ]


def overrides(data: Path, repo: str, rate: float, serve: str) -> list[str]:
    items = [
        *lite0_training(data, WORK, 96, 2),
        f"publish.repo={WORK / repo}",
        f"publish.capture_rate={rate}",
        f"publish.capture_dir={WORK / 'capture'}",
        f"serve.workdir={WORK / serve}",
        *server_ports(),
    ]
    return [x for item in items for x in ("-o", item)]


def server_ports() -> list[str]:
    """Free ports for one server, as serve.* overrides."""
    return [f"serve.{key}={free_port()}" for key in ("grpc_port", "http_port", "metrics_port")]


def sortflow(*args: str, cwd: Path = WORK) -> None:
    subprocess.run([SORTFLOW, *args], cwd=cwd, check=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def release(data: Path) -> tuple[list[str], list[str]]:
    """Train, export and register once; publish into two repositories (capture off and on); serve both."""
    WORK.mkdir(parents=True, exist_ok=True)
    off = overrides(data, "repo_off", 0.0, "serve_off")
    on = overrides(data, "repo_on", 1.0, "serve_on")
    if not (WORK / "output/export/model.onnx").is_file():
        for step in ("train", "export", "register"):
            sortflow(step, *off)
    for args in (off, on):
        sortflow("publish", *args)
        sortflow("serve", *without_published(args))
    return off, on


def grpc_port(args: list[str]) -> int:
    return int(next(a for a in args if a.startswith("serve.grpc_port=")).split("=")[1])


def load(port: int, files: list[bytes], concurrency: int = CONCURRENCY) -> float:
    """Send every file once, one request each, from `concurrency` threads; requests/s."""
    import tritonclient.grpc as grpcclient

    chunks = [files[i::concurrency] for i in range(concurrency)]

    def worker(chunk: list[bytes]) -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        for data in chunk:
            tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            client.infer("sortflow-classifier_bytes", [tensor])

    threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(files) / (time.perf_counter() - began)


def capture_cost(off: list[str], on: list[str], files: list[bytes]) -> dict[str, float]:
    load(grpc_port(off), files[:100])
    load(grpc_port(on), files[:100])
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(7):  # alternating rounds, so both see the same machine
        rates["off"].append(load(grpc_port(off), files[:800]))
        rates["on"].append(load(grpc_port(on), files[:800]))
    result = {k: statistics.median(v) for k, v in rates.items()}
    result["ratio"] = result["on"] / result["off"]
    print(f"capture cost: off {rates['off']} req/s, on {rates['on']} req/s")
    print(f"capture cost (medians): off {result['off']:.0f} req/s, on {result['on']:.0f} req/s: {result['ratio']:.2f}x")
    return result


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


SHIFTS = {
    "darker photos": lambda im: ImageEnhance.Brightness(im).enhance(0.55),
    "grayscale photos": lambda im: im.convert("L"),
    "blurred photos": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
}


def windows(val: list[tuple[Path, int]], labels: list[str]) -> list[tuple[str, list[bytes]]]:
    rng = random.Random(0)
    originals = {p: p.read_bytes() for p, _ in val}
    shifted = {name: {p: encode(fn(Image.open(p).convert("RGB"))) for p, _ in val} for name, fn in SHIFTS.items()}
    plan = [("in-distribution", [originals[p] for p, _ in rng.sample(val, WINDOW)]) for _ in range(IN_DISTRIBUTION)]
    for name, files in shifted.items():
        plan += [(name, [files[p] for p, _ in rng.sample(val, WINDOW)]) for _ in range(SHIFTED)]
    paper = [p for p, label in val if labels[label] == "paper"]
    others = [p for p, label in val if labels[label] != "paper"]
    for _ in range(SHIFTED):
        mix = rng.choices(paper, k=int(WINDOW * 0.8)) + rng.sample(others, WINDOW - int(WINDOW * 0.8))
        rng.shuffle(mix)
        plan.append(("80% one class (paper)", [originals[p] for p in mix]))
    return plan


def captured(folder: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (folder / "records").glob("*.jsonl"))


def detection(on: list[str], val: list[tuple[Path, int]], labels: list[str]) -> dict[str, list[bool]]:
    from components.traffic.windows import drift_tests, live_table, load_profile, served_window

    params = load_params(None, on[1::2])
    os.chdir(WORK)
    profile = load_profile(params, "1")
    found: dict[str, list[bool]] = {}
    for kind, files in windows(val, labels):
        before, start = captured(WORK / "capture"), time.time()
        load(grpc_port(on), files)
        while captured(WORK / "capture") < before + len(files):
            time.sleep(0.05)
        hours = (time.time() - start + 0.01) / 3600  # this window's requests only
        window = dataclasses.replace(params, monitor=dataclasses.replace(params.monitor, window_hours=hours))
        _, _, served = served_window(window)
        drifted = [f.check for f in drift_tests(live_table(served, profile["labels"]), profile, params) if f.drift]
        found.setdefault(kind, []).append(bool(drifted))
        print(f"{kind:24} {len(served)} requests: {', '.join(drifted) or 'no drift'}")
    return found


def monitor_10k(on: list[str], val: list[tuple[Path, int]]) -> float:
    """Write 10,000 captured requests (val images, their real probabilities) and time `sortflow monitor`."""
    from components.model.onnx_session import onnx_probabilities, onnx_session, raw_images
    from components.triton_models.capture import Capture

    params = load_params(None, on[1::2])
    export = json.loads((WORK / "output/export/export_result.json").read_text())
    pixels, _ = raw_images(Path(params.dataset.dir), "val", export["data_config"])
    probabilities = onnx_probabilities(onnx_session(WORK / "output/export/model.onnx"), pixels)
    folder = WORK / "capture10k"
    capture = Capture(str(folder), 1.0, 10**10, "sortflow-classifier", "1")
    rng = random.Random(1)
    for i in range(10_000):
        index = rng.randrange(len(val))
        capture.submit(val[index][0].read_bytes(), probabilities[index].tolist())
        if i % 400 == 399:
            while capture.captured + capture.dropped < i + 1:
                time.sleep(0.01)
    while capture.captured + capture.dropped < 10_000:
        time.sleep(0.01)
    args = [*on, "-o", f"publish.capture_dir={folder}", "-o", "monitor.window_hours=1"]
    args += ["-o", "monitor.output=monitor10k"]
    began = time.perf_counter()
    run = subprocess.run([SORTFLOW, "monitor", *args], cwd=WORK, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    assert run.returncode in (0, 3), run.stderr[-2000:]
    print(f"sortflow monitor on {capture.captured} captured requests ({capture.dropped} dropped): {seconds:.1f} s")
    return seconds


def main() -> None:
    data = dataset()
    off, on = release(data)
    try:
        lines = (data / "val.txt").read_text().splitlines()
        val = [(data / line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in lines]
        labels = [line.split(" ", 1)[1] for line in (data / "label.txt").read_text().splitlines()]
        cost = capture_cost(off, on, [p.read_bytes() for p, _ in val] * 2)
        found = detection(on, val, labels)
        seconds = monitor_10k(on, val)
    finally:
        for args in (off, on):
            sortflow("serve", "--stop", *without_published(args))
    result = {"capture_cost": cost, "detection": found, "monitor_10k_seconds": seconds}
    (WORK / "results.json").write_text(json.dumps(result, indent=2))
    record(
        Result(
            "monitor",
            "Monitoring: capture cost, drift detection on TrashNet, `sortflow monitor` on 10,000 requests",
            "EfficientNet-Lite0 fine-tuned on TrashNet and served by the bundled Triton. Capture cost: "
            "`<model>_bytes` requests/s with capture off and at rate 1.0, in seven alternating rounds (medians). "
            "Detection: windows of served val images, unchanged or shifted, each checked by `sortflow monitor`.",
            ["traffic", "windows", "drift reported", "rate"],
            [[kind, len(hits), sum(hits), f"{sum(hits) / len(hits):.2f}"] for kind, hits in found.items()],
            [
                f"Capture cost: {cost['off']:.0f} req/s off, {cost['on']:.0f} req/s on: {cost['ratio']:.2f}x "
                "(target: at least 0.9x).",
                "Targets: at most 1 false alarm in 20 windows of unchanged traffic; at least 9 in 10 shifted ones.",
                f"`sortflow monitor` on 10,000 captured requests: {seconds:.1f} s (target: under 60 s).",
            ],
        )
    )


if __name__ == "__main__":
    main()
