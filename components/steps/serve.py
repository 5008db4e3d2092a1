"""serve: a real Triton Inference Server on `serve.host` (127.0.0.1 unless set) over the published model repository.

With a `tritonserver` that has the onnxruntime backend (a Triton container), `publish.repo` is served as
it is. Otherwise the server bundled in the nvidia-pytriton wheel runs, which has only the python
backend: it serves a generated runtime copy of the repository in which each ONNX model runs through
onnxruntime in a python-backend model, with the same names, inputs, outputs, labels and batching.
Models are loaded explicitly, so after a publish `serving.control.reload_if_running` loads the new version
without a restart. The server's process, state and health are in `components/serving/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from components.core.config import Params
from components.core.errors import InputError, ServiceError
from components.core.procs import start_time
from components.serving import control
from components.serving.control import running_server
from components.serving.health import failed_to_load, model_health, model_ready, resident_memory
from components.serving.process import (
    command,
    die_with_parent,
    find_server,
    repo_models,
    served_repo,
    tail,
    terminate,
)
from components.serving.state import STATE_FILE, ServerState, client_host, read_state, write_state

log = logging.getLogger(__name__)


def _workdir(params: Params) -> Path:
    return Path(params.serve.workdir)


def exposure_warning(host: str, ports: list[int]) -> str | None:
    """What to say when the server would listen beyond this machine (`serve.host` not a loopback address)."""
    import ipaddress

    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        local = False
    if local:
        return None
    return (
        f"Triton listens on {host} (serve.host): ports {', '.join(map(str, ports))} are reachable from other "
        "machines, with no authentication; set serve.host=127.0.0.1 unless that is what you want"
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def status(params: Params) -> ServerState | None:
    """The running server started from this folder, or None (also when its pid now names another process)."""
    return running_server(params)


def inspect(params: Params) -> dict[str, Any]:
    """What `serve --status` reports: "stopped"; "crashed" (the server died: its log's tail); or "running" /
    "unhealthy" with each model's health (`reload` brings an unhealthy model back)."""
    state = read_state(_workdir(params))
    if state is None:
        return {"status": "stopped"}
    recorded = dataclasses.asdict(state)
    if not state.alive():
        return {**recorded, "status": "crashed", "log_tail": tail(Path(state.log))}
    health = {model: model_health(state, model) for model in state.models}
    ok = all(h == "healthy" for h in health.values())
    memory = resident_memory(state.pid)
    return {**recorded, "status": "running" if ok else "unhealthy", "health": health, "memory": memory}


def _models_to_serve(params: Params) -> list[str]:
    """The models of `publish.repo`, once nothing stands in the way of starting a server for them."""
    current = status(params)
    if current:
        raise InputError(
            f"a server is already running (pid {current.pid}, gRPC port {current.grpc_port}); "
            "stop it with `sortflow serve --stop`"
        )
    repo = Path(params.publish.repo)
    models = repo_models(repo)
    if not models:
        raise InputError(f"{repo}: no models to serve; run `sortflow publish` first")
    for key in ("grpc_port", "http_port", "metrics_port"):
        port = getattr(params.serve, key)
        if not _port_free(params.serve.host, port):
            raise InputError(
                f"port {port} (serve.{key}) is already in use on {params.serve.host}; stop what uses it or "
                f"choose another: -o serve.{key}=..."
            )
    return models


def _wait_ready(process: subprocess.Popen, models: list[str], params: Params, log_path: Path, timeout: float) -> None:
    host, http_port = client_host(params.serve.host), params.serve.http_port
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending:
        if process.poll() is not None:
            raise InputError(
                f"Triton exited with code {process.returncode} while starting; see {log_path}:\n" + tail(log_path)
            )
        if time.monotonic() > deadline:
            terminate(process.pid)
            raise ServiceError(f"models {pending} not ready after {timeout:.0f} s; see {log_path}:\n" + tail(log_path))
        pending = [m for m in pending if not model_ready(host, http_port, m)]
        failed = failed_to_load(host, http_port, pending)
        if failed:
            terminate(process.pid)
            raise InputError(
                "Triton could not load " + "; ".join(f"{m}: {why}" for m, why in failed.items()) + f" (see {log_path})"
            )
        time.sleep(0.2)


def _launch(params: Params, timeout: float, foreground: bool = False) -> tuple[subprocess.Popen, ServerState]:
    """Start Triton over `publish.repo`, wait until every model is ready, and record its state. In the
    background it gets a session of its own; in the foreground it stays this process's child and ends with it."""
    serve = params.serve
    models = _models_to_serve(params)
    work = _workdir(params)
    work.mkdir(parents=True, exist_ok=True)
    server = find_server(params)
    repo = Path(params.publish.repo)
    served = served_repo(server, repo, models, work)
    log_path = work / "tritonserver.log"
    if (work / STATE_FILE).is_file() and log_path.is_file():  # a server that crashed: keep its log to read
        os.replace(log_path, work / "tritonserver.crashed.log")
    warning = exposure_warning(serve.host, [serve.grpc_port, serve.http_port, serve.metrics_port])
    if warning:
        log.warning(warning)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command(server, served, models, params, work),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server.env,
            start_new_session=True,
            preexec_fn=die_with_parent if foreground and sys.platform == "linux" else None,
        )
    _wait_ready(process, models, params, log_path, timeout)
    state = ServerState(
        pid=process.pid,
        host=serve.host,
        grpc_port=serve.grpc_port,
        http_port=serve.http_port,
        metrics_port=serve.metrics_port,
        repo=str(repo.resolve()),
        served_repo=str(served),
        models=models,
        log=str(log_path.resolve()),
        stock_triton=server.serves_onnx,
        started=start_time(process.pid),
    )
    write_state(work, state)
    log.info(
        "Triton ready: gRPC %s:%d, HTTP %d, metrics %d; models %s",
        serve.host,
        serve.grpc_port,
        serve.http_port,
        serve.metrics_port,
        ", ".join(models),
    )
    return process, state


def start(params: Params, timeout: float = 120) -> ServerState:
    """Start Triton in the background on `serve.host` over `publish.repo`; its state once every model is ready.

    Writes `serve.workdir`: server.json (pid, ports, models), tritonserver.log (a crashed server's log is
    kept as tritonserver.crashed.log) and, for the bundled server, the runtime repository. Raises
    SortflowError for a running server, a port in use, an empty repository or a server that exits while
    starting; ServiceError when models are not ready in time.
    """
    return _launch(params, timeout)[1]


def run_foreground(params: Params, timeout: float = 120) -> int:
    """Serve as a child of this process, for a process manager (systemd, Kubernetes, a container runtime).

    SIGTERM or SIGINT is passed on to Triton, which finishes the requests in flight before it exits: then
    0. A server that exits by itself returns its exit code (1 for a signal), so the supervisor restarts it.
    """
    process, state = _launch(params, timeout, foreground=True)
    stopping: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        (_workdir(params) / STATE_FILE).unlink(missing_ok=True)
    if stopping:
        log.info("Triton (pid %d) drained its requests and stopped on signal %d", state.pid, stopping[0])
        return 0
    log.error(
        "Triton (pid %d) exited by itself with code %d; see %s:\n%s",
        state.pid,
        code,
        state.log,
        tail(Path(state.log)),
    )
    return code if code > 0 else 1


def stop(params: Params) -> bool:
    """Stop the server started from this folder; False if none was running."""
    state = status(params)
    path = _workdir(params) / STATE_FILE
    if state is None:
        path.unlink(missing_ok=True)
        return False
    terminate(state.pid)
    path.unlink(missing_ok=True)
    log.info("Stopped Triton (pid %d)", state.pid)
    return True


def reload(params: Params) -> ServerState:
    """`sortflow serve --reload`: load every model of the running server again (after a backend died)."""
    return control.reload(params)
