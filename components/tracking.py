"""MLflow tracking: where runs go, the lineage tags every run carries, and `sortflow compare`.

Uses an explicit MlflowClient (no fluent active-run state), so components can log to a given run.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from components.cls_dataset import LABEL_FILE, SPLITS, list_file
from components.config import MlflowParams, Params
from components.dvc_data import dvc_file_for
from components.errors import ServiceError

DEFAULT_URI = "sqlite:///mlflow.db"
LOGGED_SECTIONS = ("dataset", "split", "train")


def tracking_uri(params: MlflowParams) -> str:
    """`mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI, else a SQLite file in the current folder."""
    return params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def client(params: MlflowParams) -> tuple[Any, str]:
    """An MlflowClient and the experiment id, creating the experiment on first use."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(params)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            socket.create_connection((parsed.hostname, parsed.port or 443), timeout=3).close()
        except OSError as exc:
            raise ServiceError(
                f"MLflow tracking server {uri} cannot be reached ({exc}); start it or point mlflow.tracking_uri "
                "(or MLFLOW_TRACKING_URI) at a running server"
            ) from exc
    mlflow_client = MlflowClient(tracking_uri=uri)
    experiment = mlflow_client.get_experiment_by_name(params.experiment)
    if experiment is not None:
        return mlflow_client, experiment.experiment_id
    # A local store keeps its artifacts beside it (./mlruns), not in a folder of MLflow's choosing.
    artifacts = Path("mlruns").resolve().as_uri() if parsed.scheme in ("sqlite", "file", "") else None
    return mlflow_client, mlflow_client.create_experiment(params.experiment, artifact_location=artifacts)


def flat_params(params: Params) -> dict[str, str]:
    """The parameters a run depends on, as `section.key` -> text."""
    resolved = params.to_dict()
    return {f"{s}.{k}": str(v) for s in LOGGED_SECTIONS for k, v in resolved[s].items()}


def _git(*args: str) -> str | None:
    try:
        run = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return run.stdout.strip() if run.returncode == 0 else None


def dataset_hash(dataset_dir: str | Path) -> str:
    """A hash of label.txt, train.txt and val.txt: which images, with which labels."""
    digest = hashlib.blake2b(digest_size=16)
    for name in (LABEL_FILE, *(list_file(s) for s in SPLITS)):
        digest.update((Path(dataset_dir) / name).read_bytes())
    return digest.hexdigest()


def lineage_tags(params: Params, data_dir: str | Path) -> dict[str, str]:
    """Git commit, the dataset's DVC hash (when it is DVC-tracked) and a hash of the lists in `data_dir`
    (the prepared dataset that training read)."""
    tags = {"sortflow.dataset_lists_hash": dataset_hash(data_dir), "sortflow.model": params.train.model}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["sortflow.git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    dvc_file = dvc_file_for(params.dataset.dir)
    if dvc_file is not None:
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
        if outs[0].get("md5"):
            tags["sortflow.dataset_dvc_md5"] = outs[0]["md5"]
    return tags


def compare_runs(params: MlflowParams, limit: int = 10) -> tuple[list[str], list[dict[str, str]]]:
    """Recent runs side by side: the parameters that differ between them, top-1, top-5 and time."""
    mlflow_client, experiment_id = client(params)
    runs = mlflow_client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
    keys = sorted({k for r in runs for k in r.data.params})
    differing = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    rows = []
    for r in runs:
        minutes = ((r.info.end_time or r.info.start_time) - r.info.start_time) / 60000
        rows.append(
            {
                "run": r.info.run_name or r.info.run_id[:8],
                **{k: r.data.params.get(k, "") for k in differing},
                "val_top1": f"{r.data.metrics['val_top1']:.4f}" if "val_top1" in r.data.metrics else "",
                "val_top5": f"{r.data.metrics['val_top5']:.4f}" if "val_top5" in r.data.metrics else "",
                "minutes": f"{minutes:.1f}",
                "status": r.info.status,
            }
        )
    columns = ["run", *differing, "val_top1", "val_top5", "minutes", "status"]
    return columns, rows
