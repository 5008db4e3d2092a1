"""Triton model configs for a published classifier, and their parser (Triton's own protobuf schema).

Two models per classifier: `<model>` (what a stock Triton serves directly: onnxruntime_onnx, an NCHW
image in, probabilities out with labels for the classification extension) and `<model>_bytes` (a
python-backend model that takes encoded image files, decodes them as evaluation does, runs the
classifier's ONNX file itself or calls `<model>` through BLS, and, when asked, captures the traffic for
monitoring).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from components.core.errors import InputError
from components.model.contract import INPUT_NAME, LABELS_FILE, OUTPUT_NAME

BYTES = "_bytes"
BYTES_INPUT = "image_bytes"
DECISION = "DECISION"  # the bytes model's answer per image: the class name, or `unsure`
THRESHOLDS = "unsure_thresholds"  # the config parameter with the per-class thresholds, in label order
RETIRED = ("_preprocess",)  # models of earlier releases that publish removes (the bytes model decodes itself)


def model_source(name: str) -> Path:
    """A file of `components.triton_models` (what Triton runs in its python backend), found as package data."""
    return Path(str(files("components.triton_models") / name))


@dataclass(frozen=True)
class BytesSettings:
    """What the bytes model takes (publish.max_image_pixels, publish.max_request_mb), captures (serve.capture_*:
    rate 0 is off) and where it runs the classifier (publish.bytes_inference, publish.threads)."""

    max_image_pixels: int
    max_request_mb: float
    capture_rate: float
    capture_dir: str
    capture_max_mb: int
    inference: str  # bytes_inference(): local, the ONNX file runs in each decoding instance; classifier, BLS
    threads: int  # onnxruntime intra-op threads of a local session (publish.threads; 0 = onnxruntime's own)


def bytes_inference(setting: str, instance_kind: str) -> str:
    """Where `<model>_bytes` runs the classifier (publish.bytes_inference): `local`, inside each decoding
    instance, saves the second backend process and Triton's round trip to it per request (1.3x on 1080p
    frames on 2 CPU cores, BENCHMARKS.md); `classifier` calls `<model>` through Triton (BLS), which a GPU
    classifier needs. `auto` is local for a CPU classifier and `classifier` for a GPU one."""
    if setting != "auto":
        return setting
    return "classifier" if instance_kind == "gpu" else "local"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    image_size: int
    resize_size: int
    interpolation: str
    labels: list[str]
    lineage: dict[str, str]
    thresholds: tuple[float, ...] = ()  # per class, from evaluate; empty: every answer is accepted


def _thresholds(info: ModelInfo) -> dict[str, str]:
    return {THRESHOLDS: ",".join(f"{t:.9g}" for t in info.thresholds)} if info.thresholds else {}


def parse_thresholds(parameters: dict[str, str]) -> list[float]:
    """The per-class thresholds of a model config's parameters, by class index (none: every answer accepted)."""
    text = parameters.get(THRESHOLDS, "")
    return [float(v) for v in text.split(",")] if text else []


def model_names(name: str) -> list[str]:
    """The Triton models of a classifier, in the order they must be loaded."""
    return [name, f"{name}{BYTES}"]


def check_labels(labels: list[str]) -> None:
    """Triton's classification extension answers "score:index:label": a ':' or a newline breaks it."""
    bad = [label for label in labels if ":" in label or "\n" in label or not label.strip()]
    if bad:
        raise InputError(
            f"class names {bad!r} contain ':' or a line break (or are empty), which breaks Triton's classification "
            "results (score:index:label); rename these classes in label.txt and train again"
        )


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in sorted(values.items()))


def classifier_config(
    info: ModelInfo, max_batch_size: int, kind: str, instances: int, threads: int, queue_delay_us: int
) -> str:
    """The stock Triton config: onnxruntime_onnx, one NCHW image input, one FP32 vector output. It serves the
    published version by number (not the latest folder), so a rollback to a lower version serves that one.
    `threads` is onnxruntime's intra-op thread count per instance (the onnxruntime backend's parameter, which
    sortflow's own runner reads too; 0 = onnxruntime's default). `queue_delay_us` is how long the dynamic
    batcher may hold a request to fill a bigger batch (0: it runs what has arrived)."""
    size = info.image_size
    parameters = {**info.lineage, **_thresholds(info), "intra_op_thread_count": str(threads)}
    delay = f" max_queue_delay_microseconds: {queue_delay_us} " if queue_delay_us else " "
    return f"""name: "{info.name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
version_policy: {{ specific: {{ versions: [ {info.version} ] }} }}
input [
  {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, {size}, {size} ] }}
]
output [
  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {len(info.labels)} ] label_filename: "{LABELS_FILE}" }}
]
instance_group [ {{ count: {instances} kind: {kind} }} ]
dynamic_batching {{{delay}}}
model_warmup [
  {{
    name: "zeros"
    batch_size: 1
    inputs {{ key: "{INPUT_NAME}" value: {{ data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] zero_data: true }} }}
  }}
]
{_parameters(parameters)}
"""


def bytes_config(info: ModelInfo, max_batch_size: int, settings: BytesSettings, instances: int) -> str:
    """The encoded-image endpoint: one BYTES input (a file per item), the classifier's labelled output and
    the decision (the class name, or `unsure` below the class's threshold)."""
    values = {
        "classifier": info.name,
        "registry_version": str(info.version),
        "image_size": str(info.image_size),
        "resize_size": str(info.resize_size),
        "interpolation": info.interpolation,
        "max_image_pixels": str(settings.max_image_pixels),
        "max_request_mb": f"{settings.max_request_mb:g}",
        "capture_rate": f"{settings.capture_rate:g}",
        "capture_dir": settings.capture_dir,
        "capture_max_mb": str(settings.capture_max_mb),
        "inference": settings.inference,
        "intra_op_thread_count": str(settings.threads),
        **_thresholds(info),
    }
    return f"""name: "{info.name}{BYTES}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "{BYTES_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {len(info.labels)} ] label_filename: "{LABELS_FILE}" }},
  {{ name: "{DECISION}" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
dynamic_batching {{ }}
{_parameters(values)}
"""


def parse_config(text: str, where: str) -> Any:
    """Parse with Triton's own schema; a config Triton would reject fails here, before it is written."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InputError(f"{where}: not a valid Triton model config: {exc}") from exc
