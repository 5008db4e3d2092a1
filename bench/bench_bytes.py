"""The encoded-image endpoint (`<model>_bytes`) on camera frames, side by side in one run (issue 13, part).

1. Requests/s at concurrency 1, 4 and 8 for 1920x1080 JPEG frames and for TrashNet's 112 px JPEGs, on a real
   Triton server, next to an in-process baseline doing the same work in one process (the same decode,
   resize and crop, then onnxruntime at batch 1).
2. The same in-process baseline with the previous preprocessing (torchvision's resize on a full decode), so
   the speed-up of the torch-free, DCT-scaled decode is a ratio measured here.
3. Resident memory of each server process after warm-up and 1,000 requests.
The model is bench_monitor's: EfficientNet-Lite0 at 96 px trained 2 epochs on TrashNet.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "components" / "triton_models"))

from bench_monitor import WORK, grpc_port, load, release, sortflow  # noqa: E402
from bench_train import dataset  # noqa: E402
from preprocess import preprocess  # noqa: E402

LEVELS = (1, 4, 8)


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


def in_process(files: list[bytes], fn: object, config: dict[str, str], seconds: float = 8.0) -> float:
    """Frames/s of decode + resize + crop + onnxruntime (batch 1) in this process, cycling over `files`."""
    from components.onnx_io import onnx_session

    session = onnx_session(WORK / "output/export/model.onnx")
    size, resize, interpolation = int(config["image_size"]), int(config["resize_size"]), config["interpolation"]
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        pixels = fn(files[done % len(files)], size, resize, interpolation)[None]
        session.run(["probabilities"], {"image": pixels})
        done += 1
    return done / (time.perf_counter() - began)


def alternating(files: list[bytes], config: dict[str, str], rounds: int = 3) -> tuple[float, float]:
    """The in-process rate with the new and with the previous preprocessing, medians of alternating rounds."""
    import statistics

    new, previous = [], []
    for _ in range(rounds):
        new.append(in_process(files, preprocess, config, 4.0))
        previous.append(in_process(files, torch_preprocess, config, 4.0))
    return statistics.median(new), statistics.median(previous)


def bytes_config() -> dict[str, str]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = (WORK / "repo_off/sortflow-classifier_bytes/config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}


def resident_mb(args: list[str]) -> dict[str, float]:
    """VmRSS of the server started with `args` and of each of its backend processes, by model."""
    import json
    import subprocess

    workdir = next(a.split("=", 1)[1] for a in args if a.startswith("serve.workdir="))
    state = json.loads((Path(workdir) / "server.json").read_text())
    pids = {"tritonserver": state["pid"]}
    children = subprocess.run(["pgrep", "-P", str(state["pid"])], capture_output=True, text=True).stdout.split()
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        model = next((p.split("/")[-3] for p in cmdline if p.endswith("model.py")), pid)
        pids[model] = int(pid)
    out = {}
    for name, pid in pids.items():
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
        out[name] = int(line.split()[1]) / 1024
    return out


def main() -> None:
    data = dataset()
    off, on = release(data)
    sortflow("serve", "--stop", *on)  # one server is enough here
    config = bytes_config()
    camera = frames()
    small = [p.read_bytes() for p in sorted((data / "images").rglob("*.jpg"))[:400]]
    port = grpc_port(off)
    load(port, camera[:8], 1)
    load(port, small[:50], 1)
    print(f"model: {config['classifier']} at {config['image_size']} px (resize {config['resize_size']})")
    for name, files, count in (("1080p JPEG frames", camera, 240), ("TrashNet 112 px JPEGs", small, 400)):
        batch = (files * (count // len(files) + 1))[:count]
        rates = {level: load(port, batch, level) for level in LEVELS}
        base, before = alternating(files, config)
        cells = ", ".join(f"c{level} {rate:.0f}/s ({rate / base:.2f}x)" for level, rate in rates.items())
        print(
            f"{name}: Triton {cells}; in-process {base:.0f}/s; previous preprocessing in-process {before:.0f}/s "
            f"(new/previous {base / before:.2f}x)"
        )
    load(port, (small * 3)[:1000], 4)
    memory = resident_mb(off)
    print(
        "resident MB after warm-up and 1,000 requests: "
        + ", ".join(f"{k} {v:.0f}" for k, v in memory.items())
        + f"; all {sum(memory.values()):.0f}"
    )
    sortflow("serve", "--stop", *off)


if __name__ == "__main__":
    main()
