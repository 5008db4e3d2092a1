"""publish: the registry's champion into a Triton model repository (`publish.repo`), atomically.

Writes `<model>/config.pbtxt` (what a stock Triton serves directly: onnxruntime_onnx), `labels.txt` and
`<version>/model.onnx`, plus `<model>_bytes`: an ensemble whose one input is the encoded image file and
whose preprocessing (`<model>_preprocess`) is a python-backend model. Every config is parsed with
Triton's own protobuf schema before it is written. A version folder is built aside and renamed into
place, so a running server never sees half a version.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import Params
from components.errors import SortflowError
from components.fsutil import atomic_write_text, staged_dir
from components.model_io import INPUT_NAME, LABELS_FILE, MODEL_FILE, OUTPUT_NAME, RESULT_FILE

log = logging.getLogger(__name__)

PREPROCESS, BYTES = "_preprocess", "_bytes"
BYTES_INPUT = "image_bytes"
KEEP_VERSIONS = 2  # on disk, for a quick rollback; the server loads only the latest
TEMPLATES = Path(__file__).parent / "triton_models"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    image_size: int
    resize_size: int
    interpolation: str
    labels: list[str]
    lineage: dict[str, str]


def check_labels(labels: list[str]) -> None:
    """Triton's classification extension answers "score:index:label": a ':' or a newline breaks it."""
    bad = [label for label in labels if ":" in label or "\n" in label or not label.strip()]
    if bad:
        raise SortflowError(
            f"class names {bad!r} contain ':' or a line break (or are empty), which breaks Triton's classification "
            "results (score:index:label); rename these classes in label.txt and train again"
        )


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in sorted(values.items()))


def classifier_config(info: ModelInfo, max_batch_size: int, kind: str, instances: int) -> str:
    """The stock Triton config: onnxruntime_onnx, one NCHW image input, one FP32 vector output."""
    size = info.image_size
    return f"""name: "{info.name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, {size}, {size} ] }}
]
output [
  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {len(info.labels)} ] label_filename: "{LABELS_FILE}" }}
]
instance_group [ {{ count: {instances} kind: {kind} }} ]
dynamic_batching {{ }}
model_warmup [
  {{
    name: "zeros"
    batch_size: 1
    inputs {{ key: "{INPUT_NAME}" value: {{ data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] zero_data: true }} }}
  }}
]
{_parameters(info.lineage)}
"""


def preprocess_config(info: ModelInfo, max_batch_size: int) -> str:
    size = info.image_size
    return f"""name: "{info.name}{PREPROCESS}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "{BYTES_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ }}
{_parameters({"image_size": str(size), "resize_size": str(info.resize_size), "interpolation": info.interpolation})}
"""


def ensemble_config(info: ModelInfo, max_batch_size: int) -> str:
    return f"""name: "{info.name}{BYTES}"
platform: "ensemble"
max_batch_size: {max_batch_size}
input [ {{ name: "{BYTES_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {len(info.labels)} ] label_filename: "{LABELS_FILE}" }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{info.name}{PREPROCESS}"
      model_version: -1
      input_map {{ key: "{BYTES_INPUT}" value: "{BYTES_INPUT}" }}
      output_map {{ key: "{INPUT_NAME}" value: "pixels" }}
    }},
    {{
      model_name: "{info.name}"
      model_version: -1
      input_map {{ key: "{INPUT_NAME}" value: "pixels" }}
      output_map {{ key: "{OUTPUT_NAME}" value: "{OUTPUT_NAME}" }}
    }}
  ]
}}
"""


def parse_config(text: str, where: str) -> Any:
    """Parse with Triton's own schema; a config Triton would reject fails here, before it is written."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise SortflowError(f"{where}: not a valid Triton model config: {exc}") from exc


def _write_config(path: Path, text: str) -> None:
    parse_config(text, str(path))
    atomic_write_text(path, text)


def _place_version(model_dir: Path, version: int, files: dict[str, Path]) -> None:
    """Build `<version>/` aside and rename it into place in one step; keep the newest KEEP_VERSIONS."""
    with staged_dir(model_dir / str(version), replace=True) as stage:
        for name, src in files.items():
            shutil.copyfile(src, stage / name)
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), reverse=True)
    for stale in versions[KEEP_VERSIONS:]:
        shutil.rmtree(model_dir / str(stale))


def write_repository(repo: Path, info: ModelInfo, onnx_file: Path, params: Params) -> list[str]:
    """The three models of one classifier; returns their names."""
    publish = params.publish
    kind = "KIND_GPU" if publish.instance_kind.lower() == "gpu" else "KIND_CPU"
    model_dir = repo / info.name
    _write_config(model_dir / "config.pbtxt", classifier_config(info, publish.max_batch_size, kind, publish.instances))
    atomic_write_text(model_dir / LABELS_FILE, "".join(f"{label}\n" for label in info.labels))
    _place_version(model_dir, info.version, {MODEL_FILE: onnx_file})

    pre_dir = repo / f"{info.name}{PREPROCESS}"
    _write_config(pre_dir / "config.pbtxt", preprocess_config(info, publish.max_batch_size))
    _place_version(pre_dir, 1, {"model.py": TEMPLATES / "preprocess.py"})

    ens_dir = repo / f"{info.name}{BYTES}"
    _write_config(ens_dir / "config.pbtxt", ensemble_config(info, publish.max_batch_size))
    atomic_write_text(ens_dir / LABELS_FILE, "".join(f"{label}\n" for label in info.labels))
    (ens_dir / "1").mkdir(exist_ok=True)  # an ensemble has no files, but Triton wants its version folder
    return [info.name, f"{info.name}{PREPROCESS}", f"{info.name}{BYTES}"]


def publish(params: Params) -> dict[str, Any]:
    """Write the current champion into `publish.repo`; reload it in a running `sortflow serve`."""
    import json

    import mlflow.artifacts as mlflow_artifacts

    from components import tracking
    from components.register import artifact_files, champion_version

    client, _ = tracking.client(params.mlflow)
    name = params.register.model_name
    champion = champion_version(client, name)
    if champion is None:
        raise SortflowError(f"model {name!r} has no champion in the MLflow registry; run `sortflow register` first")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(
                mlflow_artifacts.download_artifacts(
                    artifact_uri=champion.source, dst_path=tmp, tracking_uri=tracking.tracking_uri(params.mlflow)
                )
            )
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise SortflowError(
                f"registry version {champion.version} of {name!r}: its files at {champion.source} "
                f"cannot be read ({exc}); register the model again"
            ) from exc
        files = artifact_files(local)
        onnx_file, labels_file = files[MODEL_FILE], files[LABELS_FILE]
        missing = [p.name for p in files.values() if not p.is_file()]
        if missing:
            raise SortflowError(
                f"registry version {champion.version} of {name!r} lacks {', '.join(missing)} at "
                f"{champion.source}; register the model again"
            )
        labels = labels_file.read_text(encoding="utf-8").splitlines()
        check_labels(labels)
        export = json.loads(files[RESULT_FILE].read_text())
        info = _model_info(name, int(champion.version), onnx_file, labels, champion.tags, export)
        repo = Path(params.publish.repo)
        models = write_repository(repo, info, onnx_file, params)
    log.info("Published %s version %s into %s", name, champion.version, repo)
    result = {
        "model_name": name,
        "version": int(champion.version),
        "repo": str(repo),
        "models": models,
        "val_top1": float(champion.tags.get("val_top1", "nan")),
    }
    from components.serve import reload_if_running

    result["reloaded"] = reload_if_running(params, models)
    return result


def _model_info(
    name: str, version: int, onnx_file: Path, labels: list[str], tags: dict[str, str], export: dict[str, Any]
) -> ModelInfo:
    import onnx

    from components.model_io import DataConfig

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    size = graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    classes = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if classes != len(labels):
        raise SortflowError(
            f"registry version {version} of {name!r}: the model has {classes} outputs but "
            f"{len(labels)} labels; register the model again"
        )
    data_config = DataConfig(**export["data_config"])
    lineage = {
        k: tags[k]
        for k in ("mlflow_run_id", "git_commit", "dataset_dvc_md5", "params_hash", "val_top1", "val_top5")
        if k in tags
    }
    lineage["registry_version"] = str(version)
    resize = data_config.resize_size
    # What a client needs to prepare pixels as the model expects (mean and std are inside the graph).
    lineage.update(image_size=str(size), resize_size=str(resize), interpolation=data_config.interpolation)
    return ModelInfo(name, version, size, resize, data_config.interpolation, labels, lineage)
