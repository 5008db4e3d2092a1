"""The encoded-image endpoint (`<model>_bytes`) on camera frames, side by side in one run (issue 13).

1. Requests/s and latency at concurrency 1, 4 and 8 for 1920x1080 JPEG frames and for TrashNet's 112 px
   JPEGs on a real Triton server (`sortflow bench-serve`'s load), published with the default settings, with
   the decoding instances calling the classifier through Triton (`publish.bytes_inference=classifier`) and
   with the settings before issue 13 (one decoding instance, onnxruntime's own thread count), next to an
   in-process baseline doing the same work in one process (the same decode, resize and crop, then
   onnxruntime at batch 1).
2. The same in-process baseline with the previous preprocessing (torchvision's resize on a full decode), so
   the speed-up of the torch-free, DCT-scaled decode is a ratio measured here.
3. Resident memory of each server process after warm-up and 1,000 requests.
The model is the demo's kind, as the issue measured it: EfficientNet-Lite0 at 64 px, fine-tuned one epoch on
TrashNet from its offline ImageNet weights.
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import bench_monitor
from bench.bench_monitor import lite0_training, server_ports
from bench.bench_train import OUT, dataset
from bench.report import Result, record
from components.steps.bench_serve import image_files, run_level
from components.steps.serve import resident_memory
from components.triton_models.preprocess import preprocess
from tests.support.overrides import without_published

REPO = Path(__file__).resolve().parents[1]

WORK = OUT / "bytes"
LEVELS = (1, 4, 8)
MODEL = "sortflow-classifier_bytes"


SETUPS = {  # name: publish settings
    "default": (),  # params' defaults: 2 decoding instances running the model themselves, 1 onnxruntime thread
    "classifier": ("publish.bytes_inference=classifier",),  # the decoding instances call <model> (BLS)
    "previous": (  # before issue 13's tuning
        "publish.decode_instances=1",
        "publish.threads=0",
        "publish.bytes_inference=classifier",
    ),
}


def overrides(data: Path, name: str, settings: tuple[str, ...]) -> list[str]:
    items = [
        *lite0_training(data, WORK, 64, 1),
        f"publish.repo={WORK / ('repo_' + name)}",
        *settings,
        f"serve.workdir={WORK / ('serve_' + name)}",
        *server_ports(),
    ]
    return [x for item in items for x in ("-o", item)]


def sortflow(*args: str) -> None:
    bench_monitor.sortflow(*args, cwd=WORK)


def servers(data: Path) -> dict[str, list[str]]:
    """Train, export and register once; publish with each of SETUPS; serve each."""
    WORK.mkdir(parents=True, exist_ok=True)
    setups = {name: overrides(data, name, settings) for name, settings in SETUPS.items()}
    if not (WORK / "output/export/model.onnx").is_file():
        for step in ("train", "export", "register"):
            sortflow(step, *setups["default"])
    for args in setups.values():
        sortflow("publish", *args)
        sortflow("serve", *without_published(args))
    return setups


def frames() -> list[bytes]:
    """Eight distinct 1080p JPEG frames (scikit-image's photos upscaled), as a camera would send them."""
    import skimage.data

    photos = [getattr(skimage.data, n)() for n in ("coffee", "chelsea", "astronaut", "rocket")]
    out = []
    for photo in photos:
        for flip in (False, True):
            image = Image.fromarray(photo[:, ::-1] if flip else photo).resize((1920, 1080), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            out.append(buffer.getvalue())
    return out


def torch_preprocess(data: bytes, size: int, resize: int, interpolation: str) -> np.ndarray:
    """The previous bytes-model preprocessing: full decode, then torchvision's antialiased resize and crop."""
    import torch
    from PIL import ImageOps
    from torchvision.transforms import InterpolationMode, v2

    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return v2.CenterCrop(size)(v2.Resize(resize, interpolation=mode, antialias=True)(tensor)).float().numpy()


def in_process(files: list[bytes], fn: object, config: dict[str, str], seconds: float) -> float:
    """Frames/s of decode + resize + crop + onnxruntime (batch 1) in this process, cycling over `files`."""
    from components.model.onnx_session import onnx_session

    session = onnx_session(WORK / "output/export/model.onnx")
    size, resize, interpolation = int(config["image_size"]), int(config["resize_size"]), config["interpolation"]
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        pixels = fn(files[done % len(files)], size, resize, interpolation)[None]
        session.run(["probabilities"], {"image": pixels})
        done += 1
    return done / (time.perf_counter() - began)


def bytes_config(args: list[str]) -> dict[str, str]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = Path(next(a.split("=", 1)[1] for a in args if a.startswith("publish.repo=")))
    config = text_format.Parse((repo / MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}


def setting(args: list[str], key: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"{key}="))


def requests_of(files: list[bytes]) -> list:
    import tritonclient.grpc as grpcclient

    out = []
    for data in files:
        tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        out.append([tensor])
    return out


def compare(
    key: str, name: str, files: list[bytes], count: int, setups: dict[str, list[str]], rounds: int = 3
) -> None:
    """Alternating rounds of every server at every level and of the in-process baselines; medians."""
    config = bytes_config(setups["default"])
    inputs = requests_of(files)
    rates: dict[tuple, list[float]] = {}
    p99: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        for setup, args in setups.items():
            url = f"127.0.0.1:{setting(args, 'serve.grpc_port')}"
            for level in LEVELS:
                fields, error = run_level(url, MODEL, inputs, level, count, 60)
                assert error is None, error
                rates.setdefault((setup, level), []).append(fields["per_second"])
                p99.setdefault((setup, level), []).append(fields["p99_ms"])
        rates.setdefault("new", []).append(in_process(files, preprocess, config, 4.0))
        rates.setdefault("previous", []).append(in_process(files, torch_preprocess, config, 4.0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["new"]
    rows = []
    for setup in setups:
        cells = [
            f"{med[(setup, level)]:.0f}/s ({med[(setup, level)] / base:.2f}x, p99 "
            f"{statistics.median(p99[(setup, level)]):.0f} ms)"
            for level in LEVELS
        ]
        rows.append([f"{setup} {' '.join(SETUPS[setup])}", *cells])
    record(
        Result(
            f"bytes_{key}",
            f"Encoded images on `<model>_bytes`: {name}",
            "`sortflow bench-serve`'s load (one image per request over gRPC) on servers published with each "
            "setting, beside an in-process baseline that does the same work in one process (decode, resize, "
            f"crop, onnxruntime at batch 1): {base:.0f}/s here, and {med['previous']:.0f}/s with the previous "
            "preprocessing. Servers and baselines alternate in three rounds; medians, with the ratio to the "
            "in-process baseline.",
            ["publish settings", *(f"c{level}" for level in LEVELS)],
            rows,
        )
    )


def main() -> None:
    data = dataset()
    setups = servers(data)
    try:
        config = bytes_config(setups["default"])
        print(f"model: {config['classifier']} at {config['image_size']} px (resize {config['resize_size']})")
        small = [p.read_bytes() for p in image_files((str(data / "images"),))[:400]]
        compare("frames", "1080p JPEG frames", frames(), 240, setups)
        compare("trashnet", "TrashNet 112 px JPEGs", small, 400, setups)
        url = f"127.0.0.1:{setting(setups['default'], 'serve.grpc_port')}"
        run_level(url, MODEL, requests_of((small * 3)[:1000]), 4, 1000, 120)
        import json

        state = json.loads((Path(setting(setups["default"], "serve.workdir")) / "server.json").read_text())
        memory = resident_memory(state["pid"])
        print(
            "\nresident MB after warm-up and 1,000 requests (default settings): "
            + ", ".join(f"{m['process']} {m['rss_mb']:.0f}" for m in memory)
            + f"; all {sum(m['rss_mb'] for m in memory):.0f}"
        )
    finally:
        for args in setups.values():
            sortflow("serve", "--stop", *without_published(args))


if __name__ == "__main__":
    main()
