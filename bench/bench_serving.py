"""Serving benchmarks, side by side in one run.

1. onnxruntime vs torch eager: latency at batch 1 and throughput at batch 32, for lcnet_100 and
   EfficientNet-Lite0 at 224 px, both exported as sortflow exports them (raw pixels in, probabilities out).
2. A real Triton server (gRPC, dynamic batching) at concurrency 1, 4 and 8 vs in-process onnxruntime on
   the same model: throughput and p50/p99 latency of batch-1 requests (`sortflow bench-serve`'s load), with
   publish.threads 0 and 1, over plain gRPC and through system shared memory; then each server's resident
   memory after more than 1,000 requests.
Weights are random, with BatchNorm statistics warmed on random images so no denormal floats skew timings.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import Result, record
from components.core.config import Params
from components.model.deployable import Deployable, export_onnx
from components.model.onnx_session import onnx_session
from components.model.zoo import create_model, get_spec

REPO = Path(__file__).resolve().parents[1]

SIZE = 224


def build(name: str, out: Path, size: int = SIZE) -> tuple[Deployable, Path]:
    spec = get_spec(name)
    cfg = spec.timm_cfg()
    model = Deployable(create_model(spec, 6), tuple(cfg.mean), tuple(cfg.std))
    model.train()
    with torch.no_grad():
        for _ in range(5):  # BatchNorm running statistics of real-looking activations
            model(torch.rand(16, 3, size, size) * 255)
    model.eval()
    path = out / f"{spec.timm_name}-{size}.onnx"
    export_onnx(model, size, path)
    return model, path


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def compare_runtimes(name: str, out: Path) -> tuple[Path, list[str]]:
    model, path = build(name, out)
    session = onnx_session(path)
    one = np.random.rand(1, 3, SIZE, SIZE).astype(np.float32) * 255
    many = np.random.rand(32, 3, SIZE, SIZE).astype(np.float32) * 255
    with torch.inference_mode():
        t1 = statistics.median(timed(lambda: model(torch.from_numpy(one)), 30))
        t32 = statistics.median(timed(lambda: model(torch.from_numpy(many)), 5))
    o1 = statistics.median(timed(lambda: session.run(None, {"image": one}), 30))
    o32 = statistics.median(timed(lambda: session.run(None, {"image": many}), 5))
    row = [name, f"{t1 * 1000:.1f}", f"{o1 * 1000:.1f}", f"{t1 / o1:.2f}x", f"{32 / t32:.0f}", f"{32 / o32:.0f}"]
    return path, [*row, f"{t32 / o32:.2f}x"]


def runtimes(out: Path) -> Path:
    lcnet, lcnet_row = compare_runtimes("PP-LCNet_x1_0", out)
    _, lite0_row = compare_runtimes("EfficientNet-Lite0", out)
    record(
        Result(
            "serving",
            "Serving: onnxruntime vs torch eager",
            f"Both models exported as sortflow exports them (raw pixels in, normalization and softmax in the graph), "
            f"at {SIZE} px with 6 classes; random weights with BatchNorm statistics warmed on random images (no "
            "denormal floats). torch and onnxruntime use the same threads. Batch-1 figures are medians of 30 "
            "calls, batch-32 figures medians of 5.",
            [
                "model",
                "torch batch 1 (ms)",
                "onnxruntime batch 1 (ms)",
                "speed-up",
                "torch batch 32 (img/s)",
                "onnxruntime batch 32 (img/s)",
                "speed-up",
            ],
            [lcnet_row, lite0_row],
            ["Target: onnxruntime at least 3.5x faster than torch at batch 1."],
        )
    )
    return lcnet


def photos(folder: Path, size: int) -> Path:
    """Eight photos (scikit-image's) as JPEG files a little larger than the model's input."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("coffee", "chelsea", "astronaut", "rocket"):
        image = Image.fromarray(getattr(skimage.data, name)()).resize((size * 4 // 3, size))
        image.save(folder / f"{name}.jpg", quality=90)
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{name}-flipped.jpg", quality=90)
    return folder


def ceiling(onnx_file: Path, size: int) -> dict[str, float]:
    """In-process onnxruntime: img/s at batch 32 (this machine's ceiling) and 8, and the batch-1 p50 (ms)."""
    session = onnx_session(onnx_file)
    out = {}
    for batch in (32, 8):
        images = np.random.rand(batch, 3, size, size).astype(np.float32) * 255
        out[f"b{batch}"] = batch / statistics.median(timed(lambda x=images: session.run(None, {"image": x}), 10))
    one = np.random.rand(1, 3, size, size).astype(np.float32) * 255
    out["b1_ms"] = statistics.median(timed(lambda: session.run(None, {"image": one}), 50)) * 1000
    return out


SETTINGS = {"threads 0 (pixel clients)": 0, "threads 1 (default)": 1}  # publish.threads


def triton(out: Path, onnx_file: Path, name: str, label: str, size: int, rounds: int = 3) -> None:
    """Pixel requests at concurrency 1, 4 and 8 over gRPC and over shared memory, for each SETTINGS value,
    in alternating rounds (medians) next to in-process onnxruntime; then the servers' resident memory."""
    from components.integrations.triton_config import ModelInfo
    from components.steps import serve
    from components.steps.bench_serve import BenchConfig, bench_serve
    from components.steps.publish import write_repository
    from components.steps.serve import resident_memory

    images = photos(out / f"photos-{size}", size)
    servers = {}
    for name, threads in SETTINGS.items():
        params = Params()
        params.publish.repo, params.publish.threads = str(out / f"repo-{size}-{threads}"), threads
        params.serve.grpc_port, params.serve.http_port, params.serve.metrics_port = free_ports(3)
        params.serve.workdir = str(out / f"serve-{size}-{threads}")
        info = ModelInfo("bench", 1, size, int(size / 0.875), "bicubic", [f"c{i}" for i in range(6)], {})
        write_repository(Path(params.publish.repo), info, onnx_file, params)
        serve.start(params)
        servers[name] = params
    try:
        rows: dict[tuple, list] = {}
        base: list[dict[str, float]] = []
        for _ in range(rounds):
            base.append(ceiling(onnx_file, size))
            for name, params in servers.items():
                for transport in ("none", "system"):
                    config = BenchConfig(
                        f"127.0.0.1:{params.serve.grpc_port}", "bench", ("pixels",), (1, 4, 8), 400, 60,
                        (str(images),), transport,
                    )  # fmt: skip
                    for r in bench_serve(config):
                        rows.setdefault((name, transport, r.concurrency), []).append(r)
        limits = {k: statistics.median(b[k] for b in base) for k in base[0]}
        _report(name, label, rows, limits)
        for name, params in servers.items():
            config = BenchConfig(
                f"127.0.0.1:{params.serve.grpc_port}", "bench", ("bytes",), (4,), 1000, 120, (str(images),)
            )
            bench_serve(config)  # with the pixel rounds above: warm-up and more than 1,000 requests
            memory = resident_memory(serve.status(params).pid)
            print(
                f"resident MB, {name}: "
                + ", ".join(f"{m['process']} {m['rss_mb']:.0f}" for m in memory)
                + f"; all {sum(m['rss_mb'] for m in memory):.0f}"
            )
    finally:
        for params in servers.values():
            serve.stop(params)


def _report(name: str, label: str, rows: dict[tuple, list], limits: dict[str, float]) -> None:
    table = []
    for (setting, transport, level), results in rows.items():
        rate = statistics.median(r.per_second for r in results)
        p50, p99 = (statistics.median(getattr(r, k) for r in results) for k in ("p50_ms", "p99_ms"))
        where = "gRPC" if transport == "none" else "gRPC + system shared memory"
        added = f" (+{p50 - limits['b1_ms']:.2f} over in-process)" if level == 1 else ""
        share = f"{rate / limits['b32']:.2f}x"
        table.append([setting, where, level, f"{rate:.0f}", share, f"{p50:.2f}{added}", f"{p99:.1f}"])
    record(
        Result(
            name,
            f"Triton pixel path: {label}",
            "The bundled Triton server (python backend + onnxruntime, gRPC, dynamic batching), batch-1 requests "
            "from 1, 4 and 8 client threads, in alternating rounds (medians) beside in-process onnxruntime: batch "
            f"32 {limits['b32']:.0f} img/s (the ceiling), batch 8 {limits['b8']:.0f} img/s, batch 1 p50 "
            f"{limits['b1_ms']:.2f} ms.",
            ["publish.threads", "transport", "concurrency", "requests/s", "/ batch-32 ceiling", "p50 (ms)", "p99 (ms)"],
            table,
            ["Targets: concurrency 8 at least 0.85x of the batch-32 ceiling; at most 1.5 ms added at concurrency 1."],
        )
    )


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def main() -> None:
    torch.manual_seed(0)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        lcnet = runtimes(Path(tmp))
        triton(Path(tmp), lcnet, "serving_lcnet_100", "lcnet_100 at 224 px (compute-bound here)", SIZE)
        _, small = build("PP-LCNet_x0_5", Path(tmp), 112)
        triton(Path(tmp), small, "serving_lcnet_050", "lcnet_050 at 112 px, TrashNet's size (overhead-bound)", 112)


if __name__ == "__main__":
    main()
