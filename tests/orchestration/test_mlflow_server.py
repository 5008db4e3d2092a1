"""The release commands against a real MLflow tracking server on PostgreSQL that proxies the artifacts
(`--serve-artifacts`): nothing is written to the project's own store, and the lineage reads as on SQLite."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.project import MODEL, project_copy

# `sortflow register` in a process that has imported what it needs and waits for the start file, so that two of
from tests.support.services import command_env, sh

# `sortflow register` in a process that has imported what it needs and waits for the start file, so that two of
# them run the gate in the same instant, not a process start-up apart.
AT_ONCE = """
import sys, time, pathlib, mlflow, torch, onnxruntime, components.steps.register
from components.cli import main
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.001)
sys.exit(main(["register", "-o", "register.model_name=concurrent"]))
"""
LINEAGE = ("git_commit", "dataset_dvc_md5", "dataset_lists_hash", "params_hash", "val_top1", "val_set_hash")


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _triton_parameters(project: Path) -> dict[str, str]:
    from components.integrations.triton_config import parse_config

    config = parse_config((project / "triton_repo" / MODEL / "config.pbtxt").read_text(), MODEL)
    return {k: v for k, v in config.parameters.items() if k != "mlflow_run_id"}


@pytest.fixture(scope="module")
def served_project(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Path:
    """A project copy, byte for byte the one of `dvc_project`, after `dvc repro` with the MLflow server."""
    project = project_copy(tmp_path_factory.mktemp("mlflow-server") / "project")
    sh(["dvc", "repro"], project, MLFLOW_TRACKING_URI=mlflow_server)
    return project


@pytest.mark.slow
def test_pipeline_on_the_server_has_the_lineage_of_sqlite(
    served_project: Path, mlflow_server: str, dvc_project: tuple[Path, str, Path]
) -> None:
    sqlite_project, _, sqlite_results = dvc_project
    assert not (served_project / "mlruns").exists() and not (served_project / "mlflow.db").exists()
    name = yaml.safe_load((served_project / "params.yaml").read_text())["register"]["model_name"]
    server = _client(mlflow_server).get_model_version(name, "1")
    local = _client(f"sqlite:///{sqlite_project / 'mlflow.db'}").get_model_version(name, "1")
    assert {k: server.tags[k] for k in LINEAGE} == {k: local.tags[k] for k in LINEAGE}
    run = _client(mlflow_server).get_run(server.tags["mlflow_run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: clients need no shared disk
    assert run.data.tags["mlflow.source.git.commit"] == server.tags["git_commit"]
    assert run.data.tags["sortflow.dataset_dvc_md5"] == server.tags["dataset_dvc_md5"]
    assert _triton_parameters(served_project) == _triton_parameters(sqlite_results)
    assert (served_project / f"triton_repo/{MODEL}/1/model.onnx").read_bytes() == (
        sqlite_results / f"triton_repo/{MODEL}/1/model.onnx"
    ).read_bytes()


@pytest.mark.slow
def test_compare_promote_and_rollback_on_the_server(served_project: Path, mlflow_server: str) -> None:
    """The same commands with the parameter instead of the environment: -o mlflow.tracking_uri=http://..."""
    project, uri = served_project, ["-o", f"mlflow.tracking_uri={mlflow_server}"]
    for step in ("train", "evaluate", "export", "register"):
        sh(["sortflow", step, "-o", "train.seed=7", *uri], project)
    compared = sh(["sortflow", "compare", *uri], project)
    assert "train.seed" in compared and compared.count("FINISHED") >= 2, compared  # the parameter that differs
    registered = json.loads((project / "output/register/register_result.json").read_text())
    assert registered["version"] == 2
    sh(["sortflow", "promote", "2", "--reason", "team test", *uri], project)
    assert (project / f"triton_repo/{MODEL}/2/model.onnx").is_file()
    printed = sh(["sortflow", "rollback", "--reason", "team test", *uri], project)
    assert "-> 1" in printed, printed
    assert (project / f"triton_repo/{MODEL}/1/model.onnx").is_file()
    history = sh(["sortflow", "history", *uri], project)
    assert "team test" in history and "yes" in history, history
    assert not (project / "mlruns").exists() and not (project / "mlflow.db").exists()


@pytest.mark.slow
def test_two_machines_registering_at_once_get_distinct_versions_and_one_champion(
    served_project: Path, mlflow_server: str, tmp_path: Path
) -> None:
    """Two copies of the project (two machines) register the same export at once under a new name: the server
    numbers them 1 and 2, and the gate runs in that order, so version 2 is compared with version 1."""
    copies = [shutil.copytree(served_project, tmp_path / side, symlinks=True) for side in ("a", "b")]
    start = tmp_path / "start"
    env = command_env(MLFLOW_TRACKING_URI=mlflow_server)
    running = [
        subprocess.Popen([sys.executable, "-c", AT_ONCE, str(start)], cwd=c, env=env, stderr=subprocess.PIPE, text=True)
        for c in copies
    ]
    time.sleep(15)  # both have imported what register needs
    start.touch()
    for process in running:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    results = sorted(
        (json.loads((c / "output/register/register_result.json").read_text()) for c in copies),
        key=lambda r: r["version"],
    )
    assert [r["version"] for r in results] == [1, 2]
    assert results[1]["previous_champion_top1"] == pytest.approx(results[0]["val_top1"], abs=1e-6)  # gated vs 1
    from components.integrations.mlflow_registry import champion_history, champion_version

    client = _client(mlflow_server)
    assert [(c.version, c.previous) for c in champion_history(client, "concurrent")] == [(1, None), (2, 1)]
    assert champion_version(client, "concurrent").version == "2"
