"""register: the exported ONNX model into the MLflow model registry, behind a promotion gate.

The new version gets alias `challenger`; it also becomes `champion` when its val top-1 is at least the
current champion's plus `register.min_improvement` (the first version always does) and, once the dataset's
production.txt holds `register.min_production` reviewed images, the production gate (`model/production.py`)
does not refuse it. Registrations that overlap (several machines, one MLflow server) take the gate in version
order. A champion that was scored on another val set (another split, other data) is scored again on this
one first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.config import Params
from components.core.errors import InputError
from components.core.fsutil import atomic_write_json, file_digest
from components.core.locks import locked
from components.core.results import StepResult, plain
from components.data.digests import val_set_digest
from components.integrations.mlflow_registry import (
    CHALLENGER,
    EXTRA_FILES,
    REGISTERING,
    TRAIN_LIST,
    champion_version,
    downloaded,
    ensure_registered_model,
    registering,
    registering_tag,
    repair_half_registered,
    set_champion,
    wait_for_earlier,
    who,
)
from components.model.contract import INPUT_NAME, LABELS_FILE, MODEL_FILE, RESULT_FILE
from components.model.production import ProductionVerdict

log = logging.getLogger(__name__)

ARTIFACT_PREFIX = "onnx_model"
# A champion's score comes from its registry tag, written with 6 decimals (0.933148 for 0.9331476...), and
# 0.8 + 0.1 > 0.9 in floats: a gap this small is rounding, not a difference (one image in a million).
EPSILON = 1e-6


def params_hash(params: Params) -> str:
    from components.integrations.mlflow_tracking import flat_params

    return hashlib.blake2b(json.dumps(flat_params(params), sort_keys=True).encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Comparison:
    """Both models' top-1 on the same val images: the current ones, less those the champion trained on."""

    new_top1: float
    champion_top1: float
    images: int
    left_out: int


@dataclass(frozen=True)
class Decision:
    promoted: bool
    new_top1: float  # the new version's score that was compared
    champion_top1: float | None  # the champion's, None when there was none to compare with
    text: str


def decide_promotion(
    version: str,
    new_top1: float,
    min_improvement: float,
    champion: str | None = None,
    champion_top1: float | None = None,
    comparison: Comparison | None = None,
) -> Decision:
    """The promotion gate. `champion`: the champion's version, if any. `champion_top1`: its score on the same
    val set. `comparison`: both scored again on the current val images (the champion was scored on another
    val set). A champion with neither cannot be compared, and the new version replaces it."""
    if comparison is not None:
        new_top1, champion_top1 = comparison.new_top1, comparison.champion_top1
    if champion is None:
        return Decision(True, new_top1, None, f"version {version} is the first: champion (val top-1 {new_top1:.4f})")
    if champion_top1 is None:
        text = (
            f"version {version} replaces champion version {champion}: the champion was scored on another val "
            "set, and it predicts other classes or trained on every current val image, so the two cannot be "
            "compared: promoted to champion"
        )
        return Decision(True, new_top1, None, text)
    promoted = new_top1 - champion_top1 >= min_improvement - EPSILON
    where = ""
    if comparison is not None:
        where = f" on {comparison.images} current val images (the champion was scored on another val set"
        where += f"; {comparison.left_out} it trained on left out)" if comparison.left_out else ")"
    verb = "promoted to champion" if promoted else "not promoted; champion stays"
    text = (
        f"version {version} (val top-1 {new_top1:.4f}) vs champion version {champion} "
        f"({champion_top1:.4f}){where} + min_improvement {min_improvement}: {verb}"
    )
    return Decision(promoted, new_top1, champion_top1, text)


def _save_mlflow_model(export_dir: Path, result: dict[str, Any], dst: Path, train_list: Path) -> None:
    """The ONNX flavor with a signature, an input example and the extra files: the labels, the export report, the
    train list, the reference profile, the embedder, the embeddings and the weights."""
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
        extra_files=[
            str(p)
            for p in (export_dir / name if name != TRAIN_LIST else train_list for name in EXTRA_FILES)
            if p.is_file()
        ],
        save_as_external_data=False,
        # What serving the flavor needs, stated: MLflow would otherwise infer it in a subprocess (about 6 s).
        pip_requirements=[f"{name}=={version(name)}" for name in ("onnx", "onnxruntime", "numpy")],
    )


def _top1(model: Path, images: Any, targets: Any) -> float:
    from components.model.metrics import accuracy_at_k
    from components.model.onnx_session import onnx_probabilities, onnx_session

    return accuracy_at_k(onnx_probabilities(onnx_session(model), images), targets, 1)


def compare_on_current_val(
    params: Params, champion: Any, root: Path, exported: dict[str, Any], export_dir: Path
) -> Comparison | None:
    """Score the champion, scored on another val set (another split, other data), again beside the new model.

    Val images the champion trained on (its registered train list) are left out for both, so neither gets
    credit for images it has seen. None when the champion predicts other classes or saw every val image.
    """
    from components.data.cls_dataset import read_list
    from components.model.onnx_session import raw_images

    decoded: dict[str, tuple[Any, Any]] = {}  # both models usually share their preprocessing: decode once

    def val_images(data_config: dict[str, Any]) -> tuple[Any, Any]:
        key = json.dumps(data_config, sort_keys=True)
        if key not in decoded:
            decoded[key] = raw_images(root, "val", data_config)
        return decoded[key]

    val = read_list(root / "val.txt")
    with downloaded(params.mlflow, champion) as files:
        if files[LABELS_FILE].read_text(encoding="utf-8").splitlines() != exported["labels"]:
            return None
        seen = {e.norm_path for e in read_list(files[TRAIN_LIST])} if files[TRAIN_LIST].is_file() else set()
        keep = [i for i, e in enumerate(val) if e.norm_path not in seen]
        if not keep:
            return None
        images, targets = val_images(json.loads(files[RESULT_FILE].read_text())["data_config"])
        champion_top1 = _top1(files[MODEL_FILE], images[keep], targets[keep])
    # On the whole val set, the new model's score is the one export measured.
    if len(keep) == len(val):
        new_top1 = exported["val_top1"]
    else:
        images, targets = val_images(exported["data_config"])
        new_top1 = _top1(export_dir / MODEL_FILE, images[keep], targets[keep])
    comparison = Comparison(new_top1, champion_top1, len(keep), len(val) - len(keep))
    log.info("Champion version %s scored again on the current val set: %s", champion.version, comparison)
    return comparison


def _new_version(params: Params, run: Any, exported: dict[str, Any], root: Path, val_hash: str) -> Any:
    """Log the model to `run` (one artifact folder per distinct model file) and register it as a new version."""

    export_dir = Path(params.export.output)
    artifact_path = f"{ARTIFACT_PREFIX}-{file_digest(export_dir / MODEL_FILE)[:12]}"
    with tempfile.TemporaryDirectory() as tmp:
        _save_mlflow_model(export_dir, exported, Path(tmp) / artifact_path, root / TRAIN_LIST)
        run.client.log_artifacts(run.run_id, str(Path(tmp) / artifact_path), artifact_path=artifact_path)
    name = params.register.model_name
    ensure_registered_model(run.client, name, "sortflow image classifier (ONNX, raw RGB 0-255 in)")
    lineage = run.tags()
    tags = {
        "mlflow_run_id": run.run_id,
        "git_commit": lineage.get("mlflow.source.git.commit", "unknown"),
        "dataset_dvc_md5": lineage.get("sortflow.dataset_dvc_md5", "untracked"),
        "dataset_lists_hash": lineage.get("sortflow.dataset_lists_hash", "unknown"),
        "params_hash": params_hash(params),
        "val_top1": f"{exported['val_top1']:.6f}",
        "val_top5": f"{exported['val_top5']:.6f}",
        "model_name": exported["model_name"],
        "val_set_hash": val_hash,
        REGISTERING: registering_tag(),
    }
    return run.client.create_model_version(name, f"runs:/{run.run_id}/{artifact_path}", run_id=run.run_id, tags=tags)


def _decide(
    params: Params, champion: Any, version: Any, val_hash: str, exported: dict[str, Any], root: Path
) -> Decision:
    """The gate against the current champion, scoring it again when it was scored on another val set."""
    if champion is None:
        return decide_promotion(version.version, exported["val_top1"], params.register.min_improvement)
    if champion.tags.get("val_set_hash") == val_hash:
        top1 = float(champion.tags["val_top1"])
        return decide_promotion(
            version.version, exported["val_top1"], params.register.min_improvement, champion.version, top1
        )
    compared = compare_on_current_val(params, champion, root, exported, Path(params.export.output))
    return decide_promotion(
        version.version, exported["val_top1"], params.register.min_improvement, champion.version, None, compared
    )


def _thresholds(exported: dict[str, Any], labels: list[str]) -> Any:
    """A version's unsure thresholds in label order (zeros, every answer accepted, before calibration)."""
    import numpy as np

    from components.model.calibration import recorded_thresholds

    return np.array(recorded_thresholds(exported, labels) or [0.0] * len(labels))


def production_verdict(params: Params, champion: Any, exported: dict[str, Any], costs: Any) -> ProductionVerdict | None:
    """The production gate, when `dataset.dir` has a production.txt: the challenger in `export.output` and the
    champion scored on its images. Skipped with its reason when there are too few or nothing to compare."""
    from components.data.cls_dataset import PRODUCTION_SPLIT, list_file, read_list
    from components.model.onnx_session import onnx_probabilities, onnx_session, raw_images
    from components.model.production import judge

    root, r = Path(params.dataset.dir), params.register
    listed = root / list_file(PRODUCTION_SPLIT)
    if not listed.is_file():
        return None
    count, labels = len(read_list(listed)), exported["labels"]
    if champion is None:
        return ProductionVerdict(count, "skipped", ["no champion to compare with"])
    if count < r.min_production:
        return ProductionVerdict(count, "skipped", [f"fewer than register.min_production ({r.min_production})"])
    with downloaded(params.mlflow, champion) as files:
        if files[LABELS_FILE].read_text(encoding="utf-8").splitlines() != labels:
            return ProductionVerdict(count, "skipped", ["the champion predicts other classes"])
        held = json.loads(files[RESULT_FILE].read_text())
        images, targets = raw_images(root, PRODUCTION_SPLIT, held["data_config"])
        old = onnx_probabilities(onnx_session(files[MODEL_FILE]), images)
    if exported["data_config"] != held["data_config"]:
        images, targets = raw_images(root, PRODUCTION_SPLIT, exported["data_config"])
    new = onnx_probabilities(onnx_session(Path(params.export.output) / MODEL_FILE), images)
    pair = (_thresholds(held, labels), _thresholds(exported, labels))
    verdict = judge(old, new, targets, pair, costs, labels, r)
    log.info("Production gate: %s", verdict.text())
    return verdict


def _gate_and_record(
    params: Params, run: Any, version: Any, val_hash: str, exported: dict[str, Any], root: Path, costs: Any
) -> tuple[dict[str, Any], ProductionVerdict | None]:
    """Wait for earlier registrations, take the gates, move the aliases and mark `version` registered whole:
    register_result.json's record, and the production gate's verdict."""
    name = params.register.model_name
    wait_for_earlier(run.client, name, int(version.version), params.register.queue_timeout)
    champion = champion_version(run.client, name)
    decision = _decide(params, champion, version, val_hash, exported, root)
    production = production_verdict(params, champion, exported, costs)
    if production is not None:
        decision = _with_production(decision, production)
        _log_production(run, name, version, production)
    run.client.set_registered_model_alias(name, CHALLENGER, version.version)
    if decision.promoted:
        set_champion(run.client, name, int(version.version), decision.text, by=f"sortflow register ({who()})")
    run.client.set_model_version_tag(name, version.version, "promotion", decision.text)
    run.client.delete_model_version_tag(name, version.version, REGISTERING)  # registered whole
    run.client.set_tag(run.run_id, "sortflow.promotion", decision.text)
    log.info("Registered %s: %s", name, decision.text)
    record = {
        "model_name": name,
        "version": int(version.version),
        "promoted": decision.promoted,
        "val_top1": exported["val_top1"],
        "compared_top1": decision.new_top1,
        "champion_version": int(version.version if decision.promoted else champion.version),
        "previous_champion_top1": decision.champion_top1,
        "decision": decision.text,
        "mlflow_run_id": run.run_id,
        "production": plain(production) if production is not None else None,
    }
    return record, production


def _with_production(decision: Decision, production: ProductionVerdict) -> Decision:
    """The val gate's decision, refused when the production gate refuses."""
    from dataclasses import replace

    if production.refused and decision.promoted:
        return replace(decision, promoted=False, text=f"{decision.text}; refused {production.text()}")
    return replace(decision, text=f"{decision.text}; {production.text()}")


def _log_production(run: Any, name: str, version: Any, production: ProductionVerdict) -> None:
    """The production figures on the version (the registry UI, `sortflow history`) and the run (`compare`)."""
    run.client.set_model_version_tag(name, version.version, "production_decision", production.decision)
    if production.challenger is None:
        return
    figures = {"production_top1": production.challenger.top1}
    figures["production_cost_per_1000"] = production.challenger.cost_per_1000
    run.log_metrics(figures, step=0)
    for key, value in figures.items():
        run.client.set_model_version_tag(name, version.version, key, f"{value:.6f}")


@dataclass(frozen=True)
class RegisterResult(StepResult):
    model_name: str
    version: int
    promoted: bool
    champion_version: int
    decision: str
    mlflow_run_id: str
    production: ProductionVerdict | None  # None: the dataset has no production.txt

    def text(self) -> str:
        return f"Registered {self.model_name} version {self.version}: {self.decision}"


@locked("register.output")
def register(params: Params) -> RegisterResult:
    """Register the model in `export.output` as a new version of `register.model_name`, behind the gate.

    Reads export.output (model.onnx, labels.txt, export_result.json) and the prepared dataset's lists.
    Writes the version (alias challenger, and champion when promoted) to the MLflow registry, and
    `register.output/register_result.json`. Raises SortflowError when nothing was exported, ServiceError
    when the MLflow store does not answer.
    """
    from components.data.partition import prepared_dataset
    from components.integrations.mlflow_tracking import ensure_run
    from components.model.production import default_costs, read_cost_matrix

    export_dir = Path(params.export.output)
    if not (export_dir / RESULT_FILE).is_file():
        raise InputError(f"{export_dir / RESULT_FILE} not found; run `sortflow export` first")
    exported = json.loads((export_dir / RESULT_FILE).read_text())
    r = params.register  # a bad cost matrix fails here, before a version exists
    labels = exported["labels"]
    costs = read_cost_matrix(r.cost_matrix, labels) if r.cost_matrix else default_costs(labels, r.unsure_cost)
    root = prepared_dataset(params, check=False)
    run = ensure_run(params, exported.get("mlflow_run_id"), root, f"register-{exported['model_name']}")
    name = params.register.model_name
    val_hash = val_set_digest(root)
    repair_half_registered(run.client, name)
    version = _new_version(params, run, exported, root, val_hash)
    with registering(run.client, name, version):
        result, production = _gate_and_record(params, run, version, val_hash, exported, root, costs)
    atomic_write_json(Path(params.register.output) / "register_result.json", result)
    keys = ("model_name", "version", "promoted", "champion_version", "decision", "mlflow_run_id")
    return RegisterResult(**{key: result[key] for key in keys}, production=production)
