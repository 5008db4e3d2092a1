"""MLflow tracking: where runs go, the lineage tags every run carries, the run of a training, the run that
evaluate and register log to, and `sortflow compare`.

Uses an explicit MlflowClient (no fluent active-run state), so components can log to a given run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.core.config import MlflowParams, Params, redact_uri
from components.core.errors import ServiceError
from components.core.procs import running
from components.data.digests import lists_digest
from components.integrations.dvc_data import dvc_md5

log = logging.getLogger(__name__)

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
                f"MLflow tracking server {redact_uri(uri)} cannot be reached ({exc}); start it or point "
                "mlflow.tracking_uri (or MLFLOW_TRACKING_URI) at a running server"
            ) from exc
    if parsed.scheme == "sqlite":
        create_sqlite_store(uri)
    mlflow_client = MlflowClient(tracking_uri=uri)
    experiment = mlflow_client.get_experiment_by_name(params.experiment)
    if experiment is not None:
        return mlflow_client, experiment.experiment_id
    # A local store keeps its artifacts beside it (./mlruns), not in a folder of MLflow's choosing.
    artifacts = Path("mlruns").resolve().as_uri() if parsed.scheme in ("sqlite", "file", "") else None
    return mlflow_client, mlflow_client.create_experiment(params.experiment, artifact_location=artifacts)


def create_sqlite_store(uri: str) -> None:
    """Create the SQLite file of `uri` whole, if it does not exist yet: MLflow's schema migrations (dozens on
    first use) run on a temporary file, which is then linked into place. A process killed during them leaves
    no half-migrated database that every later run would fail on. If another process made it meanwhile, its
    database is kept."""
    path = Path(uri.removeprefix("sqlite:///")).absolute()
    if path.exists() or "?" in uri or uri.endswith(":memory:"):
        return
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):  # left by a process killed while making it (+ journal)
        pid = stale.name[len(path.name) + 2 :].split("-")[0]
        if pid.isdigit() and not running(int(pid)):
            stale.unlink(missing_ok=True)
    # A name used once: MLflow keeps an engine per database URI for the life of the process.
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    try:
        SqlAlchemyStore(f"sqlite:///{temp}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).engine.dispose()
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)  # never over a database that another process has just made
    finally:
        temp.unlink(missing_ok=True)


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


def lineage_tags(params: Params, data_dir: str | Path) -> dict[str, str]:
    """Git commit, the dataset's DVC hash (when it is DVC-tracked) and a hash of the lists in `data_dir`
    (the prepared dataset that training read)."""
    tags = {"sortflow.dataset_lists_hash": lists_digest(data_dir), "sortflow.model": params.train.model}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["sortflow.git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    md5 = dvc_md5(params.dataset.dir)
    if md5:
        tags["sortflow.dataset_dvc_md5"] = md5
    return tags


@dataclass(frozen=True)
class Run:
    """One MLflow run that a step logs to."""

    client: Any
    run_id: str

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def tags(self) -> dict[str, str]:
        return self.client.get_run(self.run_id).data.tags


def _new_run(mlflow_client: Any, experiment_id: str, params: Params, data_dir: str | Path, name: str) -> str:
    """A run with the lineage tags of `data_dir` and every parameter logged."""
    from mlflow.entities import Param

    run_id = mlflow_client.create_run(experiment_id, run_name=name, tags=lineage_tags(params, data_dir)).info.run_id
    mlflow_client.log_batch(run_id, params=[Param(k, v) for k, v in flat_params(params).items()])
    return run_id


def ensure_run(params: Params, run_id: str | None, data_dir: str | Path, name: str) -> Run:
    """The run `run_id` (a checkpoint's training run) when this store has it; else a new, finished run with the
    lineage of `data_dir`, so that a model trained against another store keeps its lineage in this one."""
    from mlflow.exceptions import MlflowException

    mlflow_client, experiment_id = client(params.mlflow)
    if run_id:
        try:
            mlflow_client.get_run(run_id)
            return Run(mlflow_client, run_id)
        except MlflowException:
            log.warning(
                "MLflow run %s is not in %s; logging to a new run", run_id, redact_uri(tracking_uri(params.mlflow))
            )
    run_id = _new_run(mlflow_client, experiment_id, params, data_dir, name)
    mlflow_client.set_terminated(run_id, "FINISHED")
    return Run(mlflow_client, run_id)


@contextlib.contextmanager
def training_run(params: Params, data_dir: str | Path, name: str, run_id: str | None = None) -> Iterator[Run]:
    """The MLflow run of a training: new (lineage tags, parameters), or `run_id` again when resuming.

    It ends FINISHED when the block completes, KILLED on Ctrl-C and FAILED on any other error.
    """
    mlflow_client, experiment_id = client(params.mlflow)
    if run_id is None:
        run_id = _new_run(mlflow_client, experiment_id, params, data_dir, name)
    else:
        mlflow_client.update_run(run_id, status="RUNNING")
    with _ended(mlflow_client, run_id) as run:
        yield run


@contextlib.contextmanager
def tagged_run(params: MlflowParams, name: str, tags: dict[str, str]) -> Iterator[Run]:
    """A new MLflow run with these tags (no lineage, no parameters), ended as `training_run` ends its run."""
    mlflow_client, experiment_id = client(params)
    with _ended(mlflow_client, mlflow_client.create_run(experiment_id, run_name=name, tags=tags).info.run_id) as run:
        yield run


@contextlib.contextmanager
def _ended(mlflow_client: Any, run_id: str) -> Iterator[Run]:
    """The run ends FINISHED when the block completes, KILLED on Ctrl-C and FAILED on any other error."""
    try:
        yield Run(mlflow_client, run_id)
    except BaseException:
        interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)  # Ctrl-C, or SIGTERM while training
        mlflow_client.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
        raise
    mlflow_client.set_terminated(run_id, "FINISHED")


# The production gate's figures of a challenger (register), shown by `sortflow compare` where a run has them.
PRODUCTION_METRICS = {"production_top1": ".4f", "production_cost_per_1000": ".1f"}


def compare_runs(params: MlflowParams, limit: int = 10) -> tuple[list[str], list[dict[str, str]]]:
    """Recent runs side by side: the parameters that differ between them, top-1, top-5, the production gate's
    figures where register judged a run on production images, and time."""
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
                **{k: f"{r.data.metrics[k]:{f}}" if k in r.data.metrics else "" for k, f in PRODUCTION_METRICS.items()},
                "minutes": f"{minutes:.1f}",
                "status": r.info.status,
            }
        )
    production = [k for k in PRODUCTION_METRICS if any(k in r.data.metrics for r in runs)]
    columns = ["run", *differing, "val_top1", "val_top5", *production, "minutes", "status"]
    return columns, rows
