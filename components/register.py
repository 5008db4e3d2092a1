"""register: the exported ONNX model into the MLflow model registry, behind a promotion gate.

The new version gets alias `challenger`; it also becomes `champion` when its val top-1 is at least the
current champion's plus `register.min_improvement` (the first version always does). A champion that was
scored on another val set (another split, other data) is scored again on this one first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
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
TRAIN_LIST = "train.txt"  # kept with each version, so a later gate knows which images it trained on


def artifact_files(model_dir: Path) -> dict[str, Path]:
    """model.onnx, labels.txt, export_result.json and train.txt of a downloaded registry version."""
    return {
        MODEL_FILE: model_dir / MODEL_FILE,
        LABELS_FILE: model_dir / EXTRA / LABELS_FILE,
        RESULT_FILE: model_dir / EXTRA / RESULT_FILE,
        TRAIN_LIST: model_dir / EXTRA / TRAIN_LIST,
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


def _save_mlflow_model(export_dir: Path, result: dict[str, Any], dst: Path, train_list: Path) -> None:
    """The ONNX flavor with a signature, an input example, the labels, the export report and the train list."""
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
        extra_files=[str(export_dir / LABELS_FILE), str(export_dir / RESULT_FILE), str(train_list)],
        save_as_external_data=False,
        # What serving the flavor needs, stated: MLflow would otherwise infer it in a subprocess (about 6 s).
        pip_requirements=[f"{name}=={version(name)}" for name in ("onnx", "onnxruntime", "numpy")],
    )


def val_set_hash(root: Path) -> str:
    """Which val images, with which labels and content: versions with the same hash have comparable scores."""
    from components.cls_dataset import LABEL_FILE, list_file, read_list

    digest = hashlib.blake2b((root / LABEL_FILE).read_bytes(), digest_size=16)
    for entry in read_list(root / list_file("val")):
        digest.update(f"{entry.norm_path}\t{entry.label}\t{file_digest(root / entry.norm_path)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Comparison:
    """Both models' top-1 on the same val images: the current ones, less those the champion trained on."""

    new_top1: float
    champion_top1: float
    images: int
    left_out: int


def compare_on_current_val(
    params: Params, champion: Any, root: Path, exported: dict[str, Any], export_dir: Path
) -> Comparison | None:
    """Score the champion, scored on another val set (another split, other data), again beside the new model.

    Val images the champion trained on (its registered train list) are left out for both, so neither gets
    credit for images it has seen. None when the champion predicts other classes or saw every val image.
    """
    import mlflow.artifacts as mlflow_artifacts
    import numpy as np

    from components import tracking
    from components.cls_dataset import read_list
    from components.export import onnx_probabilities, onnx_session, raw_images

    decoded: dict[str, tuple[Any, Any]] = {}  # both models usually share their preprocessing: decode once

    def top1(model: Path, data_config: dict[str, Any], keep: list[int]) -> float:
        key = json.dumps(data_config, sort_keys=True)
        if key not in decoded:
            decoded[key] = raw_images(root, "val", data_config)
        images, targets = decoded[key]
        predicted = onnx_probabilities(onnx_session(model), images[keep]).argmax(1)
        return float(np.mean(predicted == targets[keep]))

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow_artifacts.download_artifacts(
                artifact_uri=champion.source, dst_path=tmp, tracking_uri=tracking.tracking_uri(params.mlflow)
            )
        )
        files = artifact_files(local)
        if files[LABELS_FILE].read_text(encoding="utf-8").splitlines() != exported["labels"]:
            return None
        seen = {e.norm_path for e in read_list(files[TRAIN_LIST])} if files[TRAIN_LIST].is_file() else set()
        val = read_list(root / "val.txt")
        keep = [i for i, e in enumerate(val) if e.norm_path not in seen]
        if not keep:
            return None
        champion_top1 = top1(files[MODEL_FILE], json.loads(files[RESULT_FILE].read_text())["data_config"], keep)
    # On the whole val set, the new model's score is the one export measured.
    whole = len(keep) == len(val)
    new_top1 = exported["val_top1"] if whole else top1(export_dir / MODEL_FILE, exported["data_config"], keep)
    comparison = Comparison(new_top1, champion_top1, len(keep), len(val) - len(keep))
    log.info("Champion version %s scored again on the current val set: %s", champion.version, comparison)
    return comparison


def register(params: Params) -> dict[str, Any]:
    from components import tracking
    from components.split import prepared_dataset

    export_dir = Path(params.export.output)
    if not (export_dir / RESULT_FILE).is_file():
        raise SortflowError(f"{export_dir / RESULT_FILE} not found; run `sortflow export` first")
    exported = json.loads((export_dir / RESULT_FILE).read_text())
    root = prepared_dataset(params, check=False)
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
            experiment_id, run_name=f"register-{exported['model_name']}", tags=tracking.lineage_tags(params, root)
        ).info.run_id
        client.set_terminated(run_id, "FINISHED")
    # One artifact folder per distinct model file: registering again never overwrites an earlier version.
    artifact_path = f"{ARTIFACT_PREFIX}-{file_digest(export_dir / MODEL_FILE)[:12]}"
    with tempfile.TemporaryDirectory() as tmp:
        _save_mlflow_model(export_dir, exported, Path(tmp) / artifact_path, root / TRAIN_LIST)
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
        "val_set_hash": val_set_hash(root),
    }
    version = client.create_model_version(name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags)
    champion = champion_version(client, name)
    new_top1 = exported["val_top1"]
    champion_top1, compared = None, None
    if champion is not None and champion.tags.get("val_set_hash") == tags["val_set_hash"]:
        champion_top1 = float(champion.tags["val_top1"])
    elif champion is not None:
        compared = compare_on_current_val(params, champion, root, exported, export_dir)
        if compared is not None:
            new_top1, champion_top1 = compared.new_top1, compared.champion_top1
    promoted = champion_top1 is None or new_top1 >= champion_top1 + params.register.min_improvement
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    verb = "promoted to champion" if promoted else "not promoted; champion stays"
    if champion is None:
        decision = f"version {version.version} is the first: champion (val top-1 {new_top1:.4f})"
    elif champion_top1 is None:
        decision = (
            f"version {version.version} replaces champion version {champion.version}: the champion was scored on "
            "another val set, and it predicts other classes or trained on every current val image, so the two "
            "cannot be compared: promoted to champion"
        )
    else:
        where = ""
        if compared is not None:
            where = f" on {compared.images} current val images (the champion was scored on another val set"
            where += f"; {compared.left_out} it trained on left out)" if compared.left_out else ")"
        decision = (
            f"version {version.version} (val top-1 {new_top1:.4f}) vs champion version {champion.version} "
            f"({champion_top1:.4f}){where} + min_improvement {params.register.min_improvement}: {verb}"
        )
    client.set_model_version_tag(name, version.version, "promotion", decision)
    client.set_tag(run_id, "sortflow.promotion", decision)
    log.info("Registered %s: %s", name, decision)
    result = {
        "model_name": name,
        "version": int(version.version),
        "promoted": promoted,
        "val_top1": exported["val_top1"],
        "compared_top1": new_top1,
        "champion_version": int(version.version if promoted else champion.version),
        "previous_champion_top1": champion_top1,
        "decision": decision,
        "mlflow_run_id": run_id,
    }
    atomic_write_json(Path(params.register.output) / "register_result.json", result)
    return result
