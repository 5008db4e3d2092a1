"""A service that does not answer is a ServiceError wherever it happens, and only that is retried by the flows;
bad data and bad settings stay SortflowError. Each service here is a real port on 127.0.0.1 with nothing behind it."""

from __future__ import annotations

import json
import subprocess
import types
from pathlib import Path

import pytest

from components.core.config import MlflowParams, load_params
from components.core.errors import DatasetError, InputError, ParamsError, ServiceError, SortflowError
from tests.support.helpers import free_port


def test_registry_download_from_a_store_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.integrations.mlflow_registry import downloaded

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"
    version = types.SimpleNamespace(version="1", name="m", source="mlflow-artifacts:/1/run/artifacts/onnx_model")
    expected = rf"registry version 1 of 'm': the MLflow store {url} did not answer"
    with pytest.raises(ServiceError, match=expected), downloaded(MlflowParams(tracking_uri=url), version):
        pass


def test_reload_in_a_triton_server_that_does_not_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server whose process lives but whose port answers nothing: the files are published, the load is not."""
    from components.core.procs import start_time
    from components.serving.control import reload_if_running
    from components.serving.state import ServerState, write_state

    monkeypatch.chdir(tmp_path)
    params = load_params(None, [f"serve.workdir={tmp_path}/serve", f"publish.repo={tmp_path}/repo"])
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        port = free_port()
        state = ServerState(
            pid=stand_in.pid,
            host="127.0.0.1",
            grpc_port=free_port(),
            http_port=port,
            metrics_port=free_port(),
            repo=str((tmp_path / "repo").resolve()),
            served_repo=str(tmp_path / "repo"),
            models=["m"],
            log=str(tmp_path / "serve/tritonserver.log"),
            stock_triton=True,
            started=start_time(stand_in.pid),
        )
        (tmp_path / "serve").mkdir()
        write_state(tmp_path / "serve", state)
        with pytest.raises(ServiceError, match=rf"Triton server on 127.0.0.1:{port} .* did not load m"):
            reload_if_running(params, ["m"])
    finally:
        stand_in.kill()
        stand_in.wait()
    assert reload_if_running(params, ["m"]) is False  # no server running: nothing to reload


def test_predict_through_triton_that_does_not_answer() -> None:
    from components.steps.predict import create_pipeline

    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServiceError, match=rf"no Triton server answers at {url}.*sortflow serve"):
        create_pipeline(triton_url=url)


def test_flows_retry_service_failures_only() -> None:
    """Only a service that did not answer is worth another try: a bug or bad input fails the same way again."""
    from prefect.states import Completed, Failed

    from flows.pipeline import _transient

    assert _transient(None, None, Failed(data=ServiceError("MLflow did not answer")))
    assert not _transient(None, None, Failed(data=InputError("bad settings")))
    assert not _transient(None, None, Failed(data=DatasetError("bad data")))
    assert not _transient(None, None, Failed(data=KeyError("a bug")))
    assert not _transient(None, None, Failed(data=ConnectionResetError("unwrapped: the step must say ServiceError")))
    assert not _transient(None, None, Completed(data=1))


def test_the_error_kinds_say_who_acts() -> None:
    """Both kinds are reported as one line by the CLI; only one of them is the user's to fix."""
    assert issubclass(ServiceError, SortflowError) and not issubclass(ServiceError, InputError)
    assert issubclass(DatasetError, InputError) and issubclass(ParamsError, InputError)


def test_stop_never_signals_a_pid_that_now_names_another_process(tmp_path: Path) -> None:
    """A server that died long ago may have left its pid to an unrelated process: stop and status see that the
    start time differs and leave that process alone."""
    from components.core.procs import start_time
    from components.serving.state import ServerState, write_state
    from components.steps.serve import status, stop

    params = load_params(None, [f"serve.workdir={tmp_path}/serve"])
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        recorded = ServerState(
            bystander.pid, "127.0.0.1", 1, 2, 3, "r", "r", ["m"], "log", True, start_time(bystander.pid) - 1
        )
        (tmp_path / "serve").mkdir()
        write_state(tmp_path / "serve", recorded)
        assert status(params) is None
        assert stop(params) is False
        assert bystander.poll() is None  # still running: never signalled
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_started_by_an_earlier_release_is_still_stopped(tmp_path: Path) -> None:
    """A server.json written before the start time was recorded (a server left running across an upgrade) is
    read by its pid alone, so `sortflow serve --stop` still stops that server."""
    from components.steps.serve import status, stop

    params = load_params(None, [f"serve.workdir={tmp_path}/serve"])
    server = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a process group of its own, as Triton's
    try:
        (tmp_path / "serve").mkdir()
        earlier = {"pid": server.pid, "host": "127.0.0.1", "grpc_port": 1, "http_port": 2, "metrics_port": 3}
        earlier |= {"repo": "r", "served_repo": "r", "models": ["m"], "log": "log", "stock_triton": True}
        (tmp_path / "serve/server.json").write_text(json.dumps(earlier))
        assert status(params) is not None
        assert stop(params) is True
        assert server.wait(10) is not None
    finally:
        server.kill()
        server.wait()


def test_a_server_reachable_from_other_machines_says_so() -> None:
    from components.steps.serve import exposure_warning

    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert exposure_warning(host, [8001]) is None, host
    for host in ("0.0.0.0", "::", "192.0.2.10", "triton.example"):
        warning = exposure_warning(host, [8001, 8000, 8002])
        assert warning and f"listens on {host}" in warning and "8001, 8000, 8002" in warning
        assert "serve.host=127.0.0.1" in warning
