"""`sortflow deploy --work-pool` on a Prefect server backed by PostgreSQL: a `process` worker started in
another folder runs a triggered training pipeline to Completed; docker and kubernetes pools get the image."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.project import MODEL, project_copy
from tests.support.services import command_env, sh, stop_group, wait_for_flow_run

DEPLOYMENTS = ("training-pipeline/nightly", "data-check/hourly", "monitor/hourly", "promote-and-serve/manual")
IMAGE = "registry.example.com/sortflow:1.0"


def _deployments(api: str) -> dict[str, dict]:
    return {name: httpx.get(f"{api}/deployments/name/{name}", timeout=10).json() for name in DEPLOYMENTS}


def _all_deployments(api: str) -> list[dict]:
    return httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()


@pytest.mark.slow
def test_a_process_worker_in_another_folder_runs_the_training_pipeline(tmp_path: Path, prefect_pg_server: str) -> None:
    api, pool = prefect_pg_server, "sortflow-process"
    project = project_copy(tmp_path / "project")
    sh(["prefect", "work-pool", "create", pool, "--type", "process"], tmp_path, PREFECT_API_URL=api)
    printed = sh(["sortflow", "deploy", "--work-pool", pool], project, PREFECT_API_URL=api)
    assert "prefect worker start --pool sortflow-process" in printed
    deployed = _deployments(api)
    for name, d in deployed.items():
        assert d["work_pool_name"] == pool, name
        assert d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}], (
            name
        )
    assert deployed["training-pipeline/nightly"]["entrypoint"] == "flows/pipeline.py:training_pipeline"

    triggered = sh(["prefect", "deployment", "run", "training-pipeline/nightly"], tmp_path, PREFECT_API_URL=api)
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered).group(1)
    elsewhere, log = tmp_path / "worker", tmp_path / "worker.log"
    elsewhere.mkdir()
    with log.open("w") as out:
        worker = subprocess.Popen(
            ["prefect", "worker", "start", "--pool", pool, "--run-once"],
            cwd=elsewhere,
            env=command_env(PREFECT_API_URL=api),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            state = wait_for_flow_run(api, run_id, lambda: log.read_text()[-5000:])
        finally:
            stop_group(worker)
    assert state["type"] == "COMPLETED", log.read_text()[-5000:]
    assert (project / f"triton_repo/{MODEL}/1/model.onnx").is_file()
    assert list(elsewhere.iterdir()) == []  # the run worked in the project folder
    filtered = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    artifacts = httpx.post(f"{api}/artifacts/filter", json=filtered, timeout=10).json()
    keys = {a["key"] for a in artifacts}
    assert {"check-dataset", "data-docs", "training-pipeline-summary"} <= keys, keys


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_docker_and_kubernetes_pools_get_the_image_and_no_local_folder(
    tmp_path: Path, prefect_pg_server: str, kind: str
) -> None:
    """What a docker or kubernetes worker would be sent: the image as job variable, the entrypoint inside it,
    the flow parameters; no pull step pointing at this machine's folder. No container runs here."""
    api, pool = prefect_pg_server, f"sortflow-{kind}"
    project = project_copy(tmp_path / "project", data=False)
    sh(["prefect", "work-pool", "create", pool, "--type", kind], tmp_path, PREFECT_API_URL=api)
    command = ["sortflow", "deploy", "--work-pool", pool, "--image", IMAGE, "-o", "train.epochs=3"]
    sh(command, project, PREFECT_API_URL=api)
    for name, d in _deployments(api).items():
        assert d["work_pool_name"] == pool and d["job_variables"] == {"image": IMAGE}, (name, d["job_variables"])
        assert not d["pull_steps"] and d["entrypoint"].startswith("flows.pipeline."), name  # installed in the image
        assert d["parameters"]["overrides"] == {"train.epochs": "3"}, name
    template = httpx.get(f"{api}/work_pools/{pool}", timeout=10).json()["base_job_template"]
    assert "image" in template["variables"]["properties"]  # the pool's template takes the image


@pytest.mark.slow
def test_a_missing_pool_or_an_image_for_the_wrong_kind_of_pool_is_refused_with_the_fix(
    tmp_path: Path, prefect_pg_server: str
) -> None:
    api = prefect_pg_server
    project = project_copy(tmp_path / "project", data=False)
    for pool, kind in (("refuse-process", "process"), ("refuse-docker", "docker")):
        sh(["prefect", "work-pool", "create", pool, "--type", kind], tmp_path, PREFECT_API_URL=api)
    for extra, message in (
        (["--work-pool", "nowhere"], "`prefect work-pool create nowhere --type process`"),
        (["--work-pool", "refuse-process", "--image", IMAGE], "takes no image: drop --image"),
        (["--work-pool", "refuse-docker"], "--image REGISTRY/sortflow:TAG"),
    ):
        run = subprocess.run(
            ["sortflow", "deploy", *extra], cwd=project, env=command_env(PREFECT_API_URL=api), capture_output=True,
            text=True,
        )  # fmt: skip
        assert run.returncode == 2 and message in run.stderr, (extra, run.stderr[-2000:])
    assert not [d for d in _all_deployments(api) if d["work_pool_name"] in ("refuse-process", "refuse-docker")]


def test_image_without_a_work_pool_is_refused(tmp_path: Path) -> None:
    refused = subprocess.run(
        ["sortflow", "deploy", "--image", IMAGE],
        cwd=tmp_path,
        env=command_env(),
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "add --work-pool NAME" in refused.stderr
