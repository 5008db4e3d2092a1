"""publish: the registry's champion into a Triton model repository (`publish.repo`), atomically.

Writes the models of `triton_config`: `<model>` with `labels.txt` and `<version>/model.onnx` (and the
version's reference profile beside it, for the monitor), and `<model>_bytes`, the encoded-image endpoint.
Every config is parsed with Triton's own protobuf schema before it is written. A version folder is built
aside and renamed into place, so a running server never sees half a version.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.config import Params
from components.core.errors import InputError
from components.core.fsutil import atomic_write_text
from components.core.locks import locked
from components.core.results import StepResult
from components.integrations.mlflow_registry import champion_version, downloaded
from components.integrations.triton_config import (
    BYTES,
    RETIRED,
    BytesSettings,
    ModelInfo,
    bytes_config,
    bytes_inference,
    check_labels,
    classifier_config,
    model_names,
    model_source,
    parse_config,
)
from components.integrations.triton_repo import place_version, published, same_files, version_files
from components.model.contract import LABELS_FILE, MODEL_FILE, RESULT_FILE
from components.serving.control import reload_if_running

log = logging.getLogger(__name__)

KEEP_VERSIONS = 2  # on disk, for a quick rollback; the server loads only the latest
BYTES_MODEL_FILES = {
    "model.py": "classify_bytes.py",
    "preprocess.py": "preprocess.py",
    "capture.py": "capture.py",
    "novelty.py": "novelty.py",  # embeddings in the capture records, novelty scores
    "onnx_runner.py": "onnx_runner.py",  # its session for publish.bytes_inference=local
}


def _write_config(path: Path, text: str) -> None:
    parse_config(text, str(path))
    atomic_write_text(path, text)


def _prune(model_dir: Path, served: int) -> None:
    """Keep the served version and the newest others, KEEP_VERSIONS in all."""
    others = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and int(p.name) != served)
    for stale in others[: max(0, len(others) - (KEEP_VERSIONS - 1))]:
        shutil.rmtree(model_dir / str(stale))


def _code_version(model_dir: Path, files: dict[str, Path]) -> int:
    """The version folder for a model whose files are sortflow's code: the latest while it holds the same
    files, else the next number (so a running server is never served a folder rewritten in place)."""
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    latest = max(versions, default=0)
    return latest if latest and same_files(model_dir / str(latest), files) else latest + 1


def write_repository(
    repo: Path, info: ModelInfo, onnx_file: Path, params: Params, beside: dict[str, Path] | None = None
) -> list[str]:
    """The models of one classifier (with the files `beside` its ONNX file: `version_files`); their names."""
    publish = params.publish
    kind = "KIND_GPU" if publish.instance_kind == "gpu" else "KIND_CPU"
    model_dir = repo / info.name
    files = {**(beside or {}), MODEL_FILE: onnx_file}
    in_place = published(model_dir / str(info.version), files)  # refused before anything is written
    _write_config(
        model_dir / "config.pbtxt",
        classifier_config(
            info, publish.max_batch_size, kind, publish.instances, publish.threads, publish.max_queue_delay_us
        ),
    )
    atomic_write_text(model_dir / LABELS_FILE, "".join(f"{label}\n" for label in info.labels))
    if in_place:
        log.info("%s version %d is already published with the same files", info.name, info.version)
    else:
        place_version(model_dir, info.version, files)
    _prune(model_dir, info.version)

    bytes_dir = repo / f"{info.name}{BYTES}"
    settings = BytesSettings(
        publish.max_image_pixels,
        publish.max_request_mb,
        publish.capture_rate,
        publish.capture_dir,
        publish.capture_max_mb,
        bytes_inference(publish.bytes_inference, publish.instance_kind),
        publish.threads,
    )
    _write_config(
        bytes_dir / "config.pbtxt", bytes_config(info, publish.max_batch_size, settings, publish.decode_instances)
    )
    atomic_write_text(bytes_dir / LABELS_FILE, "".join(f"{label}\n" for label in info.labels))
    code = {name: model_source(src) for name, src in BYTES_MODEL_FILES.items()}
    code_version = _code_version(bytes_dir, code)
    if not (bytes_dir / str(code_version)).is_dir():
        place_version(bytes_dir, code_version, code)
    _prune(bytes_dir, code_version)
    for retired in RETIRED:  # an earlier release's model that nothing calls any more
        shutil.rmtree(repo / f"{info.name}{retired}", ignore_errors=True)
    return model_names(info.name)


@dataclass(frozen=True)
class PublishResult(StepResult):
    model_name: str
    version: int
    repo: str
    models: list[str]
    val_top1: float
    reloaded: bool  # a running server of this repository loaded the new files

    def text(self) -> str:
        where = f"Published {self.model_name} version {self.version} into {self.repo}/ ({', '.join(self.models)})"
        return where + ("; reloaded in the running server" if self.reloaded else "")


@locked("publish.repo")
def publish(params: Params) -> PublishResult:
    """Write the registry's champion of `register.model_name` into `publish.repo`.

    Reads the champion's files from the MLflow registry. Writes `<model>/` (config.pbtxt, labels.txt and
    the registry version's folder with model.onnx and reference_profile.json) and `<model>_bytes/` (with
    the capture settings of `publish.capture_*`), each version folder renamed into place whole, then loads
    them in a running server of this repository (no restart). Raises SortflowError when
    there is no champion or its files are unusable, ServiceError when the MLflow store does not answer.
    """
    import json

    from components.integrations import mlflow_tracking

    client, _ = mlflow_tracking.client(params.mlflow)
    name = params.register.model_name
    champion = champion_version(client, name)
    if champion is None:
        raise InputError(f"model {name!r} has no champion in the MLflow registry; run `sortflow register` first")
    repo = Path(params.publish.repo)
    with downloaded(params.mlflow, champion) as files:
        labels = files[LABELS_FILE].read_text(encoding="utf-8").splitlines()
        check_labels(labels)
        export = json.loads(files[RESULT_FILE].read_text())
        info = _model_info(name, int(champion.version), files[MODEL_FILE], labels, champion.tags, export)
        models = write_repository(repo, info, files[MODEL_FILE], params, version_files(files))
    log.info("Published %s version %s into %s", name, champion.version, repo)
    reloaded = reload_if_running(params, models)
    return PublishResult(
        name, int(champion.version), str(repo), models, float(champion.tags.get("val_top1", "nan")), reloaded
    )


def _model_info(
    name: str, version: int, onnx_file: Path, labels: list[str], tags: dict[str, str], export: dict[str, Any]
) -> ModelInfo:
    import onnx

    from components.model.contract import DataConfig

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    size = graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    classes = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if classes != len(labels):
        raise InputError(
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
    from components.model.calibration import recorded_thresholds

    thresholds = tuple(recorded_thresholds(export, labels))
    return ModelInfo(name, version, size, resize, data_config.interpolation, labels, lineage, thresholds)
