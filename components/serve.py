"""serve: a real Triton Inference Server on 127.0.0.1 over the published model repository.

With a `tritonserver` that has the onnxruntime backend (a Triton container), `publish.repo` is served as
it is. Otherwise the server bundled in the nvidia-pytriton wheel runs, which has only the python
backend: it serves a generated runtime copy of the repository in which each ONNX model runs through
onnxruntime in a python-backend model, with the same names, inputs, outputs, labels and batching.
Models are loaded explicitly, so after a publish `reload_if_running` loads the new version without a
restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import Params
from components.errors import ServiceError, SortflowError
from components.fsutil import atomic_write_json, staged_dir
from components.triton_config import BYTES, parse_config

log = logging.getLogger(__name__)

STATE_FILE = "server.json"
RUNNER = Path(__file__).parent / "triton_models" / "onnx_runner.py"


@dataclass(frozen=True)
class Server:
    binary: Path
    backends: Path
    env: dict[str, str]
    serves_onnx: bool  # has the onnxruntime backend


def _workdir(params: Params) -> Path:
    return Path(params.serve.workdir)


def find_server(params: Params) -> Server:
    """A stock Triton with the onnxruntime backend if installed, else the one inside nvidia-pytriton."""
    stock = shutil.which("tritonserver")
    if stock:
        backends = Path(os.environ.get("TRITON_BACKENDS", "/opt/tritonserver/backends"))
        if (backends / "onnxruntime").is_dir():
            return Server(Path(stock), backends, dict(os.environ), True)
    try:
        import pytriton
    except ImportError as exc:
        raise SortflowError("no Triton server found: install nvidia-pytriton or run inside a Triton container") from exc
    bundled = Path(pytriton.__file__).parent / "tritonserver"
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    copy = _workdir(params) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundled / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise SortflowError(f"the bundled Triton has no python backend stub for Python {version}")
    if not (copy / "backends" / "python" / stub.name).is_file():
        # The server wants a writable backends folder with the stub for the Python that runs the models.
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(bundled, copy, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(stub, copy / "backends" / "python" / stub.name)
    env = dict(os.environ)
    # Our libpython first: the stub otherwise may pick up the system's one of another patch release.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH")])
    )
    # The stub imports numpy and onnxruntime from the Python found first on PATH: this environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return Server(copy / "bin" / "tritonserver", copy / "backends", env, False)


def runtime_model(src: Path, dst: Path) -> None:
    """Copy one model folder; an onnxruntime_onnx model becomes a python-backend model running the ONNX file."""
    from google.protobuf import text_format

    config = parse_config((src / "config.pbtxt").read_text(), str(src / "config.pbtxt"))
    onnx = config.platform == "onnxruntime_onnx"
    with staged_dir(dst, replace=True) as stage:
        for item in src.iterdir():
            if item.is_dir():
                shutil.copytree(item, stage / item.name)
                if onnx:
                    shutil.copyfile(RUNNER, stage / item.name / "model.py")
            elif item.name != "config.pbtxt":
                shutil.copyfile(item, stage / item.name)
        if onnx:
            config.platform = ""
            config.backend = "python"
        (stage / "config.pbtxt").write_text(text_format.MessageToString(config))


def _models(repo: Path) -> list[str]:
    names = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()) if repo.is_dir() else []
    # The encoded-image models last: they call the classifiers.
    return sorted(names, key=lambda n: n.endswith(BYTES))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped) is not a running server
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def status(params: Params) -> dict[str, Any] | None:
    """The running server started from this folder, or None."""
    path = _workdir(params) / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if _alive(state["pid"]) else None


def _ready(http_port: int, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _models_to_serve(params: Params) -> list[str]:
    """The models of `publish.repo`, once nothing stands in the way of starting a server for them."""
    running = status(params)
    if running:
        raise SortflowError(
            f"a server is already running (pid {running['pid']}, gRPC port {running['grpc_port']}); "
            "stop it with `sortflow serve --stop`"
        )
    repo = Path(params.publish.repo)
    models = _models(repo)
    if not models:
        raise SortflowError(f"{repo}: no models to serve; run `sortflow publish` first")
    for key in ("grpc_port", "http_port", "metrics_port"):
        port = getattr(params.serve, key)
        if not _port_free(port):
            raise SortflowError(
                f"port {port} (serve.{key}) is already in use on 127.0.0.1; stop what uses it or "
                f"choose another: -o serve.{key}=..."
            )
    return models


def _served_repo(server: Server, repo: Path, models: list[str], work: Path) -> Path:
    """`repo` itself for a stock Triton; else a runtime copy whose ONNX models run in the python backend."""
    if server.serves_onnx:
        return repo.resolve()
    served = (work / "runtime_repo").resolve()
    shutil.rmtree(served, ignore_errors=True)
    served.mkdir(parents=True)
    for name in models:
        runtime_model(repo / name, served / name)
    return served


def _command(server: Server, served: Path, models: list[str], params: Params, work: Path) -> list[str]:
    serve = params.serve
    command = [
        str(server.binary),
        f"--model-repository={served}",
        f"--backend-directory={server.backends}",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in models),
        "--exit-on-error=false",
        f"--grpc-port={serve.grpc_port}",
        f"--http-port={serve.http_port}",
        f"--metrics-port={serve.metrics_port}",
        "--grpc-address=127.0.0.1",
        "--http-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
    ]
    if not server.serves_onnx:
        (work / "caches").mkdir(exist_ok=True)
        command.append(f"--cache-directory={(work / 'caches').resolve()}")
    return command


def _wait_ready(process: subprocess.Popen, models: list[str], http_port: int, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending:
        if process.poll() is not None:
            raise SortflowError(
                f"Triton exited with code {process.returncode} while starting; see {log_path}:\n" + _tail(log_path)
            )
        if time.monotonic() > deadline:
            _terminate(process.pid)
            raise ServiceError(f"models {pending} not ready after {timeout:.0f} s; see {log_path}:\n" + _tail(log_path))
        pending = [m for m in pending if not _ready(http_port, m)]
        time.sleep(0.2)


def start(params: Params, timeout: float = 120) -> dict[str, Any]:
    """Start Triton on 127.0.0.1 over `publish.repo` and return its state once every model is ready.

    Writes `serve.workdir`: server.json (pid, ports, models), tritonserver.log and, for the bundled
    server, the runtime repository. Raises SortflowError for a running server, a port in use, an empty
    repository or a server that exits while starting; ServiceError when models are not ready in time.
    """
    serve = params.serve
    models = _models_to_serve(params)
    work = _workdir(params)
    work.mkdir(parents=True, exist_ok=True)
    server = find_server(params)
    repo = Path(params.publish.repo)
    served = _served_repo(server, repo, models, work)
    log_path = work / "tritonserver.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            _command(server, served, models, params, work),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server.env,
            start_new_session=True,
        )
    _wait_ready(process, models, serve.http_port, log_path, timeout)
    state = {
        "pid": process.pid,
        "grpc_port": serve.grpc_port,
        "http_port": serve.http_port,
        "metrics_port": serve.metrics_port,
        "repo": str(repo.resolve()),
        "served_repo": str(served),
        "models": models,
        "log": str(log_path.resolve()),
        "stock_triton": server.serves_onnx,
    }
    atomic_write_json(work / STATE_FILE, state)
    log.info(
        "Triton ready: gRPC 127.0.0.1:%d, HTTP %d, metrics %d; models %s",
        serve.grpc_port,
        serve.http_port,
        serve.metrics_port,
        ", ".join(models),
    )
    return state


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _terminate(pid: int, grace: float = 15) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # when the server is this process's child, reap it: no zombie is left


def stop(params: Params) -> bool:
    """Stop the server started from this folder; False if none was running."""
    state = status(params)
    path = _workdir(params) / STATE_FILE
    if state is None:
        path.unlink(missing_ok=True)
        return False
    _terminate(state["pid"])
    path.unlink(missing_ok=True)
    log.info("Stopped Triton (pid %d)", state["pid"])
    return True


def reload_if_running(params: Params, models: list[str]) -> bool:
    """After a publish: refresh the running server's copy of these models and load them (no restart).

    False when no server started from this folder serves `publish.repo`. A server that does not answer
    or fails to load a model is a ServiceError (a retry may help: the files are already in place).
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    state = status(params)
    if state is None or Path(state["repo"]) != Path(params.publish.repo).resolve():
        return False
    repo = Path(params.publish.repo)
    if not state["stock_triton"]:
        for name in models:
            runtime_model(repo / name, Path(state["served_repo"]) / name)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{state['http_port']}")
    for name in models:
        try:
            client.load_model(name)
        except (InferenceServerException, OSError) as exc:
            raise ServiceError(
                f"the Triton server on 127.0.0.1:{state['http_port']} (pid {state['pid']}) did not load {name} "
                f"({exc}); see {state['log']}, or restart it with `sortflow serve --stop` and `sortflow serve`"
            ) from exc
    log.info("Loaded %s into the running server", ", ".join(models))
    return True
