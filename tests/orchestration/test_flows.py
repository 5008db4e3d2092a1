"""The Prefect path: flows on a real local Prefect server, scheduled deployments, and agreement with DVC."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from components.core.errors import ParamsError
from components.integrations.triton_config import parse_config
from tests.support.helpers import free_port
from tests.support.project import MODEL, project_copy
from tests.support.services import command_env, sh, stop_group


def _artifacts(api: str, key: str) -> list[dict]:
    response = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}}, timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.mark.slow
def test_training_pipeline_flow_end_to_end(flow_project: tuple[Path, str], prefect_server: str) -> None:
    project, printed = flow_project
    assert "## sortflow pipeline" in printed
    result = json.loads((project / "output/evaluate/evaluate_result.json").read_text())
    assert f"val top-1 **{result['metrics']['val.top1']:.4f}**" in printed
    assert (project / f"triton_repo/{MODEL}/1/model.onnx").is_file()
    summary = _artifacts(prefect_server, "training-pipeline-summary")
    assert summary and "version 1 is the first: champion" in summary[-1]["data"]
    assert _artifacts(prefect_server, "check-dataset")
    docs = _artifacts(prefect_server, "data-docs")
    assert docs and docs[-1]["data"].startswith("[Great Expectations Data Docs](file://")


@pytest.mark.slow
def test_dvc_and_prefect_paths_agree(dvc_project: tuple[Path, str, Path], flow_project: tuple[Path, str]) -> None:
    """Same data, seed and params: same metrics, same model bytes, same Triton configs and labels.

    Only the MLflow run id in the lineage parameters differs: each path is its own run.
    """
    (_, _, a), (b, _) = dvc_project, flow_project
    for report in ("output/evaluate/evaluate_result.json", "output/export/export_result.json"):
        left, right = json.loads((a / report).read_text()), json.loads((b / report).read_text())
        assert left.get("metrics") == right.get("metrics")
        assert left.get("val_top1") == right.get("val_top1")
    assert (a / "output/split/train.txt").read_bytes() == (b / "output/split/train.txt").read_bytes()
    for model in (MODEL, f"{MODEL}_bytes"):
        left, right = (parse_config((p / "triton_repo" / model / "config.pbtxt").read_text(), model) for p in (a, b))
        for config in (left, right):
            if "mlflow_run_id" in config.parameters:
                del config.parameters["mlflow_run_id"]
        assert str(left) == str(right), model
    assert (a / f"triton_repo/{MODEL}/labels.txt").read_bytes() == (b / f"triton_repo/{MODEL}/labels.txt").read_bytes()
    assert (a / f"triton_repo/{MODEL}/1/model.onnx").read_bytes() == (
        b / f"triton_repo/{MODEL}/1/model.onnx"
    ).read_bytes()


@pytest.mark.slow
def test_cli_and_prefect_agree_when_splitting_in_place(tmp_path: Path, prefect_server: str) -> None:
    """With split.output empty, both paths resplit dataset.dir in place, then check it (PaddleX's order), and
    train on it: the same lists, the same backups, the same metrics and the same model bytes."""
    cli, flow = (project_copy(tmp_path / name / "project") for name in ("cli", "flow"))
    for project in (cli, flow):
        # dvc.yaml needs a split dataset (DVC never lets a stage rewrite the data it tracks): this mode is the CLI's
        # and the flows' alone.
        (project / "dvc.yaml").unlink()
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["split"].update(output="", enable=True, seed=3)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    original = (cli / "data/val.txt").read_bytes()
    printed = sh(["sortflow", "check-dataset"], cli)
    assert "Split dataset successfully !" in printed and "Check dataset passed !" in printed
    for step in ("split", "train", "evaluate", "export"):
        sh(["sortflow", step], cli)
    sh(["sortflow", "run"], flow, PREFECT_API_URL=prefect_server)
    assert (cli / "data/val.txt.bak").read_bytes() == original
    assert (cli / "data/val.txt").read_bytes() != original
    for name in ("train.txt", "val.txt", "train.txt.bak", "val.txt.bak"):
        assert (cli / "data" / name).read_bytes() == (flow / "data" / name).read_bytes(), name
    assert not (cli / "output/split").exists() and not (flow / "output/split").exists()
    checked = [json.loads((p / "output/check_dataset_result.json").read_text()) for p in (cli, flow)]
    assert checked[0]["attributes"] == checked[1]["attributes"] and checked[0]["check_pass"]
    evaluated = [json.loads((p / "output/evaluate/evaluate_result.json").read_text()) for p in (cli, flow)]
    assert evaluated[0]["metrics"] == evaluated[1]["metrics"]
    assert (cli / "output/export/model.onnx").read_bytes() == (flow / "output/export/model.onnx").read_bytes()


@pytest.mark.slow
def test_promote_and_serve_loads_the_champion_in_triton(flow_project: tuple[Path, str], prefect_server: str) -> None:
    project, _ = flow_project
    grpc = free_port()
    ports = ["-o", f"serve.grpc_port={grpc}", "-o", f"serve.http_port={free_port()}"]
    ports += ["-o", f"serve.metrics_port={free_port()}"]
    try:
        printed = sh(["sortflow", "run", "promote-and-serve", *ports], project, PREFECT_API_URL=prefect_server)
        assert f"`{MODEL}` version 1" in printed
        status = subprocess.run(
            ["sortflow", "serve", "--status", *ports], cwd=project, env=command_env(), capture_output=True, text=True
        )
        state = json.loads(status.stdout)
        assert set(state["models"]) == {MODEL, f"{MODEL}_bytes"}
        predicted = sh(
            ["sortflow", "predict", "--triton", f"127.0.0.1:{grpc}", "--input", "data/images/glass/glass_0.jpg"],
            project,
        )
        assert "label_names" in predicted
        assert _artifacts(prefect_server, "promote-and-serve-summary")

        # The flow's shadow_version: a second registered version shadows the champion in the running server.
        sh(["sortflow", "register", "-o", "register.min_improvement=1"], project)
        flow = (
            "import sys; from flows.pipeline import promote_and_serve as f; "
            "f(overrides=dict(a.split('=') for a in sys.argv[1:]), shadow_version=2)"
        )
        sh([sys.executable, "-c", flow, *ports[1::2]], project, PREFECT_API_URL=prefect_server)
        config = parse_config((project / f"triton_repo/{MODEL}_bytes/config.pbtxt").read_text(), MODEL)
        assert config.parameters["shadow_version"].string_value == "2"
        assert config.parameters["registry_version"].string_value == "1"
        assert "version 2 shadows champion version 1" in sh(["sortflow", "shadow", "2", *ports], project)
        sh(["sortflow", "shadow", "--stop", *ports], project)
    finally:
        sh(["sortflow", "serve", "--stop", *ports], project, check=False)


@pytest.mark.slow
def test_scheduled_deployments_register_and_a_triggered_run_completes(tmp_path: Path, prefect_server: str) -> None:
    project = project_copy(tmp_path / "project", "deploy.timezone=Europe/Berlin")
    log = (tmp_path / "deploy.log").open("w")
    served = subprocess.Popen(
        [str(Path(sys.executable).parent / "sortflow"), "deploy"],
        cwd=project,
        env=command_env(PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="2"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deployments = {}
        deadline = time.monotonic() + 120
        while len(deployments) < 4:
            assert served.poll() is None, (tmp_path / "deploy.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "deploy.log").read_text()
            for name in (
                "training-pipeline/nightly",
                "data-check/hourly",
                "monitor/hourly",
                "promote-and-serve/manual",
            ):
                response = httpx.get(f"{prefect_server}/deployments/name/{name}", timeout=10)
                if response.status_code == 200:
                    deployments[name] = response.json()
            time.sleep(1)
        schedules = {
            name: [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in d["schedules"]]
            for name, d in deployments.items()
        }
        assert schedules["training-pipeline/nightly"] == [("0 2 * * *", "Europe/Berlin")]
        assert schedules["data-check/hourly"] == [("0 * * * *", "Europe/Berlin")]
        assert schedules["monitor/hourly"] == [("30 * * * *", "Europe/Berlin")]
        assert schedules["promote-and-serve/manual"] == []
        assert deployments["training-pipeline/nightly"]["parameters"]["overrides"] == {}

        triggered = sh(
            ["prefect", "deployment", "run", "training-pipeline/nightly"], project, PREFECT_API_URL=prefect_server
        )
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered).group(1)
        deadline = time.monotonic() + 300
        while True:
            state = httpx.get(f"{prefect_server}/flow_runs/{run_id}", timeout=10).json()["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, (tmp_path / "deploy.log").read_text()
            time.sleep(2)
        assert state["type"] == "COMPLETED", (tmp_path / "deploy.log").read_text()[-5000:]
        assert (project / f"triton_repo/{MODEL}/1/model.onnx").is_file()
    finally:
        stop_group(served)
        log.close()


def test_flow_rejects_bad_parameters_before_any_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import training_pipeline

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=r"train\.epochs must be 1 or more"):
        training_pipeline.fn(overrides={"train.epochs": 0})
    assert list(tmp_path.iterdir()) == []


def test_sortflow_run_checks_parameters_and_the_prefect_server_first(tmp_path: Path) -> None:
    bad = subprocess.run(
        ["sortflow", "run", "-o", "train.epochs=0"], cwd=tmp_path, env=command_env(), capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "train.epochs must be 1 or more" in bad.stderr
    url = f"http://127.0.0.1:{free_port()}/api"
    down = subprocess.run(
        ["sortflow", "run", "data-check"],
        cwd=tmp_path,
        env=command_env(PREFECT_API_URL=url),
        capture_output=True,
        text=True,
    )
    assert down.returncode == 2
    assert f"PREFECT_API_URL={url} cannot be reached" in down.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_prefect_server_that_does_not_start_in_time_is_one_line(tmp_path: Path) -> None:
    """Without PREFECT_API_URL, Prefect starts a server of its own; one slower than its timeout is an error that
    says what to set, not Prefect's traceback."""
    slow = subprocess.run(
        ["sortflow", "run", "data-check"],
        cwd=tmp_path,
        env=command_env(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert slow.returncode == 2
    assert "error: Prefect's temporary server did not start within 1 s" in slow.stderr
    assert "Traceback" not in slow.stderr


def test_unreachable_mlflow_server_names_the_setting(run_cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli("compare", "-o", f"mlflow.tracking_uri={url}")
    assert code == 2
    assert f"MLflow tracking server {url} cannot be reached" in err
    assert "mlflow.tracking_uri" in err


@pytest.mark.slow
def test_failed_data_check_stops_both_paths_with_the_report(tmp_path: Path, prefect_server: str) -> None:
    project = project_copy(tmp_path / "project", data=False)
    from tests.support.helpers import cls_dataset

    data = cls_dataset(project / "data", per_class=8, val_per_class=3)
    with (data / "val.txt").open("a") as f:
        f.write("images/glass/missing.jpg 0\n")
    sh(["dvc", "add", "-q", "data"], project)
    line = len((data / "val.txt").read_text().splitlines())

    dvc = sh(["dvc", "repro"], project, check=False)
    assert "failed to reproduce 'check_dataset'" in dvc
    assert f"val.txt:{line}" in dvc
    assert not (project / "output/split").exists()

    flow = sh(["sortflow", "run"], project, check=False, PREFECT_API_URL=prefect_server)
    assert "failed check-dataset, so the flow stops before training" in flow
    assert f"val.txt:{line}" in flow
    assert not (project / "output/split").exists()
    assert not (project / "output/train").exists()
    assert any(f"val.txt:{line}" in a["data"] for a in _artifacts(prefect_server, "check-dataset"))

    # The same through Prefect's temporary local server (no PREFECT_API_URL).
    alone = sh(["sortflow", "run", "data-check"], project, check=False, PREFECT_HOME=str(tmp_path / "prefect-home"))
    assert "Starting temporary server" in alone
    assert f"val.txt:{line}" in alone
    assert "Finished in state Failed" in alone


def test_missing_dvc_remote_names_the_setting(tmp_path: Path) -> None:
    from components.core.errors import ServiceError
    from components.integrations.dvc_data import pull

    project = project_copy(tmp_path / "project")
    assert "nothing to pull" in pull(project / "data")
    sh(["dvc", "push", "-q"], project)
    sh(["rm", "-rf", "data", ".dvc/cache"], project)
    assert "pulled" in pull(project / "data")
    assert (project / "data/label.txt").is_file()

    sh(["rm", "-rf", "data", ".dvc/cache"], project)
    sh(["dvc", "remote", "modify", "local", "url", "../nowhere"], project)
    with pytest.raises(
        ServiceError,
        match=r"neither locally nor on remote.*remote 'local' \(url \S*/nowhere; change it with `dvc remote modify",
    ):
        pull(project / "data")


@pytest.mark.slow
def test_champion_from_another_val_set_is_rescored_before_the_gate(flow_project: tuple[Path, str]) -> None:
    """After a new split, the champion's old score is not comparable: register scores both models again on the
    new val images the champion did not train on."""
    project, _ = flow_project
    sh(["sortflow", "split", "-o", "split.seed=7"], project)
    sh(["sortflow", "export"], project)
    sh(["sortflow", "register"], project)
    result = json.loads((project / "output/register/register_result.json").read_text())
    assert "current val images (the champion was scored on another val set" in result["decision"]
    # The same weights as the champion, on the same images: the same score, so the gate lets it in.
    assert result["previous_champion_top1"] == pytest.approx(result["compared_top1"])
    assert result["promoted"] is True
    sh(["sortflow", "register"], project)  # the same val set again: the tag is comparable, no re-scoring
    again = json.loads((project / "output/register/register_result.json").read_text())
    assert "another val set" not in again["decision"]
    assert again["compared_top1"] == again["val_top1"]
