"""`sortflow bench-serve`: load a running Triton server's sortflow endpoints and report requests/s and latency.

A small stand-in for Triton's `perf_analyzer` (not installable everywhere) for sortflow's two endpoints:
`<model>` takes pixels (float32 NCHW, 0-255) and `<model>_bytes` takes encoded files (JPEG/PNG bytes).
Each concurrency level runs `concurrency` client threads, each with its own gRPC connection and one
request (one image) in flight, after a warm-up; a level ends after `requests` answers or `max_seconds`,
whichever comes first, so a slow server never keeps it running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.core.errors import InputError, ServiceError
from components.integrations.triton_config import BYTES, BYTES_INPUT

log = logging.getLogger(__name__)
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_PIXEL_IMAGES = 64  # distinct pixel inputs held in memory (600 KB each at 224 px); requests cycle over them


@dataclass(frozen=True)
class BenchConfig:
    url: str  # host:port of Triton's gRPC endpoint
    model: str  # the classifier's name: `<model>` and `<model>_bytes` are loaded
    inputs: tuple[str, ...]  # "pixels", "bytes" or both
    concurrency: tuple[int, ...]
    requests: int  # answers measured per level (after the warm-up)
    max_seconds: float  # a level stops after this long even if fewer answers came
    images: tuple[str, ...]  # image files or folders; the requests cycle over them
    shared_memory: str = "none"  # "system": pixel inputs through system shared memory (same machine only)


@dataclass(frozen=True)
class LevelResult:
    endpoint: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def image_files(paths: tuple[str, ...]) -> list[Path]:
    """The image files named, folders searched recursively; an error names what holds none."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{item}: no image files ({', '.join(SUFFIXES)}) in this folder; pass --images")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder; pass image files or folders with --images")
    if not files:
        raise InputError("no images to send: pass --images FILE_OR_FOLDER (the files your clients send)")
    return files


def percentile(sorted_values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` 0-1) of values sorted ascending."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, int(np.ceil(share * len(sorted_values))) - 1))
    return sorted_values[rank]


def _client(url: str) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url)


def _model_config(url: str, model: str) -> dict[str, Any]:
    """The served model's config; a clear error when the server or the model is not there."""
    client = _client(url)
    try:
        live = client.is_server_live(client_timeout=3)
    except Exception as exc:  # tritonclient raises its own error type for every connection failure
        raise ServiceError(
            f"no Triton server answers at {url} ({exc}); start one with `sortflow serve` or pass --url HOST:PORT"
        ) from exc
    if not live or not client.is_model_ready(model, client_timeout=3):
        raise InputError(f"Triton at {url} does not serve a ready model {model!r}; pass --model, or publish it")
    return client.get_model_config(model, as_json=True)["config"]


def _bytes_inputs(files: list[Path]) -> list[Any]:
    import tritonclient.grpc as grpcclient

    out = []
    for path in files:
        tensor = grpcclient.InferInput(BYTES_INPUT, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[path.read_bytes()]], dtype=object))
        out.append([tensor])
    return out


def _pixels(config: BenchConfig, files: list[Path]) -> tuple[str, list[np.ndarray]]:
    """The classifier's input name and each image as it takes it (decoded, resized and cropped as served)."""
    from components.triton_models.preprocess import BadImage, preprocess

    spec = _model_config(config.url, config.model)
    params = {k: v["string_value"] for k, v in spec.get("parameters", {}).items()}
    name, size = spec["input"][0]["name"], int(spec["input"][0]["dims"][-1])
    resize, interpolation = int(params.get("resize_size", size)), params.get("interpolation", "bicubic")
    arrays = []
    for path in files[:MAX_PIXEL_IMAGES]:
        try:
            arrays.append(preprocess(path.read_bytes(), size, resize, interpolation)[None])
        except BadImage as exc:
            raise InputError(f"{path}: {exc}; --input pixels needs images that decode (or --input bytes)") from exc
    return name, arrays


@contextlib.contextmanager
def _shared_memory(url: str, name: str, arrays: list[np.ndarray]) -> Iterator[list[Any]]:
    """Inputs that point into one system shared-memory region registered with the server, so a request
    carries a reference instead of the pixels (perf_analyzer's --shared-memory system; same machine only)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.utils.shared_memory as shm

    size, region = arrays[0].nbytes, f"sortflow_bench_{os.getpid()}"
    handle = shm.create_shared_memory_region(region, f"/{region}", size * len(arrays))
    client, registered = _client(url), False
    try:
        for i, array in enumerate(arrays):
            shm.set_shared_memory_region(handle, [array], offset=i * size)
        try:
            client.register_system_shared_memory(region, f"/{region}", size * len(arrays))
        except Exception as exc:  # tritonclient's own error type
            raise ServiceError(
                f"Triton at {url} cannot map this machine's shared memory ({exc}); --shared-memory system "
                "works only with a server on the same machine (and, in a container, the host's /dev/shm)"
            ) from exc
        registered = True
        inputs = []
        for i, array in enumerate(arrays):
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_shared_memory(region, size, offset=i * size)
            inputs.append([tensor])
        yield inputs
    finally:
        if registered:
            client.unregister_system_shared_memory(region)
        shm.destroy_shared_memory_region(handle)


@contextlib.contextmanager
def _inputs(config: BenchConfig, endpoint: str, files: list[Path]) -> Iterator[tuple[str, list[Any]]]:
    """The model to call and one prepared input list per image, built before the clock starts."""
    import tritonclient.grpc as grpcclient

    if endpoint == "bytes":
        model = f"{config.model}{BYTES}"
        _model_config(config.url, model)
        yield model, _bytes_inputs(files)
        return
    name, arrays = _pixels(config, files)
    if config.shared_memory == "system":
        with _shared_memory(config.url, name, arrays) as inputs:
            yield config.model, inputs
        return
    inputs = []
    for array in arrays:
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append([tensor])
    yield config.model, inputs


def _level(url: str, model: str, inputs: list[Any], concurrency: int, count: int, max_seconds: float) -> tuple:
    """`count` requests from `concurrency` threads: (latencies in s, error messages, wall seconds)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    issued = iter(range(count))

    def worker() -> None:
        client = _client(url)
        while time.monotonic() < deadline:
            with lock:
                i = next(issued, None)
            if i is None:
                return
            began = time.perf_counter()
            try:
                client.infer(model, inputs[i % len(inputs)], client_timeout=60)
            except Exception as exc:  # a failed request is counted and reported, not fatal to the benchmark
                with lock:
                    errors.append(str(exc))
                continue
            with lock:
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - began


def run_level(url: str, model: str, inputs: list[Any], concurrency: int, count: int, max_seconds: float) -> tuple:
    """One concurrency level after a warm-up (connections, batching): (LevelResult fields, first error)."""
    _level(url, model, inputs, concurrency, 2 * concurrency, max_seconds)
    latencies, errors, wall = _level(url, model, inputs, concurrency, count, max_seconds)
    latencies.sort()
    fields = {
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": wall,
        "per_second": len(latencies) / wall if wall else 0.0,
        **{f"p{p}_ms": percentile(latencies, p / 100) * 1000 for p in (50, 95, 99)},
    }
    return fields, (errors[0] if errors else None)


def bench_serve(config: BenchConfig) -> list[LevelResult]:
    """Every endpoint at every concurrency level, with a progress bar; the first failed request is logged."""
    files = image_files(config.images)[: config.requests]  # the requests cycle over these
    results = []
    for endpoint in config.inputs:
        with _inputs(config, endpoint, files) as (model, inputs):
            results += _levels(config, endpoint, model, inputs)
    return results


def _levels(config: BenchConfig, endpoint: str, model: str, inputs: list[Any]) -> list[LevelResult]:
    """One endpoint at each concurrency level, with a progress bar."""
    from rich.progress import track

    results = []
    for concurrency in track(config.concurrency, description=f"{model} ({endpoint})", transient=True):
        fields, error = run_level(config.url, model, inputs, concurrency, config.requests, config.max_seconds)
        if error is not None:
            log.warning(
                "%s at concurrency %d: %d requests failed; the first: %s", model, concurrency, fields["errors"], error
            )
        results.append(LevelResult(endpoint, concurrency, **fields))
    return results


def format_table(results: list[LevelResult]) -> str:
    """A markdown table: one row per endpoint and concurrency level."""
    lines = [
        "| input | concurrency | requests | errors | requests/s | p50 (ms) | p95 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.endpoint} | {r.concurrency} | {r.requests} | {r.errors} | {r.per_second:.1f} | "
            f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} |"
        )
    return "\n".join(lines)


def as_records(results: list[LevelResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
