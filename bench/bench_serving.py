"""Serving benchmarks, side by side in one run.

1. onnxruntime vs torch eager: latency at batch 1 and throughput at batch 32, for lcnet_100 and
   EfficientNet-Lite0 at 224 px, both exported as sortflow exports them (raw pixels in, probabilities out).
2. A real Triton server (gRPC, dynamic batching) at concurrency 1, 4 and 8 vs in-process onnxruntime on
   the same model: throughput and p50/p99 latency of batch-1 requests.
Weights are random, with BatchNorm statistics warmed on random images so no denormal floats skew timings.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import Params  # noqa: E402
from components.deployable import Deployable, export_onnx  # noqa: E402
from components.models import create_model, get_spec  # noqa: E402
from components.onnx_io import onnx_session  # noqa: E402

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


def compare_runtimes(name: str, out: Path) -> Path:
    model, path = build(name, out)
    session = onnx_session(path)
    one = np.random.rand(1, 3, SIZE, SIZE).astype(np.float32) * 255
    many = np.random.rand(32, 3, SIZE, SIZE).astype(np.float32) * 255
    with torch.inference_mode():
        t1 = statistics.median(timed(lambda: model(torch.from_numpy(one)), 30))
        t32 = statistics.median(timed(lambda: model(torch.from_numpy(many)), 5))
    o1 = statistics.median(timed(lambda: session.run(None, {"image": one}), 30))
    o32 = statistics.median(timed(lambda: session.run(None, {"image": many}), 5))
    print(
        f"| {name} | {t1 * 1000:.1f} | {o1 * 1000:.1f} | {t1 / o1:.2f}x | {32 / t32:.0f} | {32 / o32:.0f} | "
        f"{t32 / o32:.2f}x |"
    )
    return path


def runtimes(out: Path) -> Path:
    print("\n## onnxruntime vs torch eager (CPU, 224 px)")
    print(
        "| model | torch batch 1 (ms, median) | onnxruntime batch 1 (ms) | speed-up | torch batch 32 (img/s) "
        "| onnxruntime batch 32 (img/s) | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    lcnet = compare_runtimes("PP-LCNet_x1_0", out)
    compare_runtimes("EfficientNet-Lite0", out)
    return lcnet


def load_test(infer, concurrency: int, requests: int) -> tuple[float, float, float]:
    """Batch-1 requests from `concurrency` threads: (requests/s, p50 ms, p99 ms)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        for _ in range(requests // concurrency):
            began = time.perf_counter()
            infer()
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    latencies.sort()
    return len(latencies) / wall, latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000


def triton(out: Path, onnx_file: Path, label: str, size: int) -> None:
    import socket

    import tritonclient.grpc as grpcclient

    from components import serve
    from components.publish import write_repository
    from components.triton_config import ModelInfo

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    params = Params()
    params.publish.repo = str(out / f"repo-{size}")
    params.publish.max_batch_size = 32
    params.serve.grpc_port, params.serve.http_port, params.serve.metrics_port = port(), port(), port()
    params.serve.workdir = str(out / f"serve-{size}")
    info = ModelInfo("bench", 1, size, int(size / 0.875), "bicubic", [f"c{i}" for i in range(6)], {})
    write_repository(Path(params.publish.repo), info, onnx_file, params)
    serve.start(params)
    try:
        image = np.random.rand(1, 3, size, size).astype(np.float32) * 255
        session = onnx_session(onnx_file)
        local = load_test(lambda: session.run(None, {"image": image}), 1, 100)
        print(
            f"\n## Triton (bundled server, python backend + onnxruntime, gRPC, dynamic batching), {label}, "
            "batch-1 requests"
        )
        print("| client | concurrency | requests/s | p50 (ms) | p99 (ms) |")
        print("|---|---|---|---|---|")
        print(f"| in-process onnxruntime | 1 | {local[0]:.0f} | {local[1]:.1f} | {local[2]:.1f} |")
        results = {}
        clients = threading.local()  # one gRPC client per thread

        def infer() -> None:
            if not hasattr(clients, "c"):
                clients.c = grpcclient.InferenceServerClient(f"127.0.0.1:{params.serve.grpc_port}")
            inputs = [grpcclient.InferInput("image", [1, 3, size, size], "FP32")]
            inputs[0].set_data_from_numpy(image)
            clients.c.infer("bench", inputs)

        for concurrency in (1, 4, 8):
            load_test(infer, concurrency, 8 * concurrency)  # warm-up: connections, batching
            results[concurrency] = load_test(infer, concurrency, 200)
            rps, p50, p99 = results[concurrency]
            print(f"| Triton gRPC | {concurrency} | {rps:.0f} | {p50:.1f} | {p99:.1f} |")
        print(
            f"throughput at concurrency 8 / concurrency 1: {results[8][0] / results[1][0]:.2f}x (target >= 3x); "
            f"Triton at concurrency 1 / in-process: {results[1][0] / local[0]:.2f}x"
        )
    finally:
        serve.stop(params)


def main() -> None:
    torch.manual_seed(0)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        lcnet = runtimes(Path(tmp))
        triton(Path(tmp), lcnet, "lcnet_100 at 224 px (compute-bound here)", SIZE)
        _, small = build("PP-LCNet_x0_5", Path(tmp), 112)
        triton(Path(tmp), small, "lcnet_050 at 112 px, TrashNet's size (overhead-bound)", 112)


if __name__ == "__main__":
    main()
