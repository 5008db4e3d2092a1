"""register: the exported ONNX model into the MLflow model registry, behind a promotion gate.

The new version gets alias `challenger`; it also becomes `champion` when its val top-1 is at least the
current champion's plus `register.min_improvement` (the first version always does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from components.config import Params
from components.errors import SortflowError
from components.fsutil import atomic_write_json, file_digest
from components.model_io import INPUT_NAME, LABELS_FILE, MODEL_FILE, RESULT_FILE

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
ARTIFACT_PREFIX = "onnx_model"
EXTRA = "extra_files"  # where MLflow's save_model puts extra_files


def artifact_files(model_dir: Path) -> dict[str, Path]:
    """model.onnx, labels.txt and export_result.json of a downloaded registry version."""
    return {
        MODEL_FILE: model_dir / MODEL_FILE,
        LABELS_FILE: model_dir / EXTRA / LABELS_FILE,
        RESULT_FILE: model_dir / EXTRA / RESULT_FILE,
    }


def params_hash(params: Params) -> str:
    from components.tracking import flat_params

    return hashlib.blake2b(json.dumps(flat_params(params), sort_keys=True).encode(), digest_size=8).hexdigest()


def champion_version(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _save_mlflow_model(export_dir: Path, result: dict[str, Any], dst: Path) -> None:
    """The ONNX flavor with a signature, an input example and the labels file."""
    from importlib.metadata import version

    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import infer_signature

    size = result["input"]["shape"][-1]
    example = np.zeros((1, 3, size, size), dtype=np.float32)
    output = np.zeros((1, len(result["labels"])), dtype=np.float32)
    mlflow.onnx.save_model(
        onnx.load(str(export_dir / MODEL_FILE)),
        str(dst),
        signature=infer_signature({INPUT_NAME: example}, output),
        input_example={INPUT_NAME: example},
        onnx_execution_providers=["CPUExecutionProvider"],
        extra_files=[str(export_dir / LABELS_FILE), str(export_dir / RESULT_FILE)],
        save_as_external_data=False,
        # What serving the flavor needs, stated: MLflow would otherwise infer it in a subprocess (about 6 s).
        pip_requirements=[f"{name}=={version(name)}" for name in ("onnx", "onnxruntime", "numpy")],
    )


def register(params: Params) -> dict[str, Any]:
    from components import tracking

    export_dir = Path(params.export.output)
    if not (export_dir / RESULT_FILE).is_file():
        raise SortflowError(f"{export_dir / RESULT_FILE} not found; run `sortflow export` first")
    exported = json.loads((export_dir / RESULT_FILE).read_text())
    client, experiment_id = tracking.client(params.mlflow)
    run_id = exported.get("mlflow_run_id")
    from mlflow.exceptions import MlflowException

    try:
        if run_id:
            client.get_run(run_id)
    except MlflowException:
        run_id = None
    if run_id is None:  # trained against another store: keep the lineage in a run of this one
        run_id = client.create_run(
            experiment_id, run_name=f"register-{exported['model_name']}", tags=tracking.lineage_tags(params)
        ).info.run_id
        client.set_terminated(run_id, "FINISHED")
    # One artifact folder per distinct model file: registering again never overwrites an earlier version.
    artifact_path = f"{ARTIFACT_PREFIX}-{file_digest(export_dir / MODEL_FILE)[:12]}"
    with tempfile.TemporaryDirectory() as tmp:
        _save_mlflow_model(export_dir, exported, Path(tmp) / artifact_path)
        client.log_artifacts(run_id, str(Path(tmp) / artifact_path), artifact_path=artifact_path)
    name = params.register.model_name
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="sortflow image classifier (ONNX, raw RGB 0-255 in)")
    run = client.get_run(run_id)
    tags = {
        "mlflow_run_id": run_id,
        "git_commit": run.data.tags.get("mlflow.source.git.commit", "unknown"),
        "dataset_dvc_md5": run.data.tags.get("sortflow.dataset_dvc_md5", "untracked"),
        "dataset_lists_hash": run.data.tags.get("sortflow.dataset_lists_hash", "unknown"),
        "params_hash": params_hash(params),
        "val_top1": f"{exported['val_top1']:.6f}",
        "val_top5": f"{exported['val_top5']:.6f}",
        "model_name": exported["model_name"],
    }
    version = client.create_model_version(name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags)
    champion = champion_version(client, name)
    new_top1 = exported["val_top1"]
    champion_top1 = float(champion.tags["val_top1"]) if champion is not None else None
    promoted = champion is None or new_top1 >= champion_top1 + params.register.min_improvement
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    if champion is None:
        decision = f"version {version.version} is the first: champion (val top-1 {new_top1:.4f})"
    else:
        verb = "promoted to champion" if promoted else "not promoted; champion stays"
        decision = (
            f"version {version.version} (val top-1 {new_top1:.4f}) vs champion version {champion.version} "
            f"({champion_top1:.4f}) + min_improvement {params.register.min_improvement}: {verb}"
        )
    client.set_model_version_tag(name, version.version, "promotion", decision)
    client.set_tag(run_id, "sortflow.promotion", decision)
    log.info("Registered %s: %s", name, decision)
    result = {
        "model_name": name,
        "version": int(version.version),
        "promoted": promoted,
        "val_top1": new_top1,
        "champion_version": int(version.version if promoted else champion.version),
        "previous_champion_top1": champion_top1,
        "decision": decision,
        "mlflow_run_id": run_id,
    }
    atomic_write_json(Path(params.register.output) / "register_result.json", result)
    return result
