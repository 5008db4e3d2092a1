"""serve: a real Triton Inference Server on `serve.host` (127.0.0.1 unless set) over the published model repository.

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

from components.core.config import Params
from components.core.errors import InputError, ServiceError
from components.core.fsutil import atomic_write_json, staged_dir
from components.core.procs import running
from components.integrations.triton_config import BYTES, model_source, parse_config

log = logging.getLogger(__name__)

STATE_FILE = "server.json"


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
        raise InputError("no Triton server found: install nvidia-pytriton or run inside a Triton container") from exc
    bundled = Path(pytriton.__file__).parent / "tritonserver"
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    copy = _workdir(params) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundled / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise InputError(f"the bundled Triton has no python backend stub for Python {version}")
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
                    shutil.copyfile(model_source("onnx_runner.py"), stage / item.name / "model.py")
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


def client_host(host: str) -> str:
    """Where this machine's clients reach a server listening on `host` (every address: the loopback one)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _http_address(state: dict[str, Any]) -> str:
    """host:port where this machine reaches the HTTP endpoint of the server that `state` describes."""
    return f"{client_host(state.get('host', ''))}:{state['http_port']}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _state(params: Params) -> dict[str, Any] | None:
    path = _workdir(params) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def status(params: Params) -> dict[str, Any] | None:
    """The running server started from this folder, or None."""
    state = _state(params)
    return state if state is not None and running(state["pid"]) else None


PROBE = "sortflow_probe"  # a request parameter: the bytes model does not capture health probes


def _probe_input(config: Any) -> Any:
    """The smallest valid request for a model: one 8x8 PNG for an encoded-image input, else zeros."""
    import io

    import numpy as np
    import tritonclient.http as httpclient
    from PIL import Image
    from tritonclient.grpc import model_config_pb2

    spec = config.input[0]
    if spec.data_type == model_config_pb2.TYPE_STRING:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "PNG")
        data = np.array([[buffer.getvalue()]], dtype=object)
        tensor = httpclient.InferInput(spec.name, list(data.shape), "BYTES")
    else:
        data = np.zeros([1, *spec.dims], dtype=np.float32)
        tensor = httpclient.InferInput(spec.name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def _health(state: dict[str, Any], model: str) -> str:
    """Healthy when the model answers a probe request, else what went wrong (a model whose backend
    process died still reports ready to Triton's ready endpoint, so only a request tells)."""
    import tritonclient.http as httpclient

    config_file = Path(state["served_repo"]) / model / "config.pbtxt"
    client = httpclient.InferenceServerClient(_http_address(state))
    try:
        client.infer(
            model, [_probe_input(parse_config(config_file.read_text(), str(config_file)))], parameters={PROBE: True}
        )
    except Exception as exc:  # whatever the server answers, the model did not classify
        return f"unhealthy: {exc}"
    return "healthy"


def _resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def resident_memory(pid: int) -> list[dict[str, Any]]:
    """Resident memory (MB) of the server and of each backend process it runs, named by model (Linux)."""
    import subprocess

    out = [{"process": "tritonserver", "pid": pid, "rss_mb": round(_resident_mb(pid), 1)}]
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in map(int, children):
        try:
            args = [a for a in Path(f"/proc/{child}/cmdline").read_text().split("\0") if a]
            rss = _resident_mb(child)
        except OSError:  # ended since pgrep listed it
            continue
        if not args:  # exited, not yet reaped: it holds no memory
            continue
        # A python-backend stub's arguments hold <repository>/<model>/<version>/model.py.
        model = next((Path(a).parts[-3] for a in args if a.endswith("model.py")), Path(args[0]).name)
        out.append({"process": model, "pid": child, "rss_mb": round(rss, 1)})
    return out


def inspect(params: Params) -> dict[str, Any]:
    """What `serve --status` reports: "stopped"; "crashed" (the server died: its log's tail); or "running" /
    "unhealthy" with each model's health (`reload` brings an unhealthy model back)."""
    state = _state(params)
    if state is None:
        return {"status": "stopped"}
    if not running(state["pid"]):
        return {**state, "status": "crashed", "log_tail": _tail(Path(state["log"]))}
    health = {model: _health(state, model) for model in state["models"]}
    ok = all(h == "healthy" for h in health.values())
    memory = resident_memory(state["pid"])
    return {**state, "status": "running" if ok else "unhealthy", "health": health, "memory": memory}


def _ready(host: str, http_port: int, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{http_port}/v2/models/{model}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _models_to_serve(params: Params) -> list[str]:
    """The models of `publish.repo`, once nothing stands in the way of starting a server for them."""
    current = status(params)
    if current:
        raise InputError(
            f"a server is already running (pid {current['pid']}, gRPC port {current['grpc_port']}); "
            "stop it with `sortflow serve --stop`"
        )
    repo = Path(params.publish.repo)
    models = _models(repo)
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
        f"--grpc-address={serve.host}",
        f"--http-address={serve.host}",
        f"--metrics-address={serve.host}",
    ]
    if not server.serves_onnx:
        (work / "caches").mkdir(exist_ok=True)
        command.append(f"--cache-directory={(work / 'caches').resolve()}")
    return command


def _wait_ready(process: subprocess.Popen, models: list[str], params: Params, log_path: Path, timeout: float) -> None:
    host, http_port = client_host(params.serve.host), params.serve.http_port
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending:
        if process.poll() is not None:
            raise InputError(
                f"Triton exited with code {process.returncode} while starting; see {log_path}:\n" + _tail(log_path)
            )
        if time.monotonic() > deadline:
            _terminate(process.pid)
            raise ServiceError(f"models {pending} not ready after {timeout:.0f} s; see {log_path}:\n" + _tail(log_path))
        pending = [m for m in pending if not _ready(host, http_port, m)]
        failed = _failed_to_load(host, http_port, pending)
        if failed:
            _terminate(process.pid)
            raise InputError(
                "Triton could not load " + "; ".join(f"{m}: {why}" for m, why in failed.items()) + f" (see {log_path})"
            )
        time.sleep(0.2)


def _failed_to_load(host: str, http_port: int, models: list[str]) -> dict[str, str]:
    """The models among `models` that Triton marked UNAVAILABLE, with its reason (a KIND_GPU model without a
    GPU, a backend that is missing): waiting longer would not load them."""
    if not models:
        return {}
    request = urllib.request.Request(f"http://{host}:{http_port}/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            index = json.loads(r.read())
    except (OSError, ValueError):
        return {}
    return {e["name"]: e.get("reason", "") for e in index if e["name"] in models and e.get("state") == "UNAVAILABLE"}


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the supervising process dies (even by kill -9)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _launch(params: Params, timeout: float, foreground: bool = False) -> tuple[subprocess.Popen, dict[str, Any]]:
    """Start Triton over `publish.repo`, wait until every model is ready, and record its state. In the
    background it gets a session of its own; in the foreground it stays this process's child and ends with it."""
    serve = params.serve
    models = _models_to_serve(params)
    work = _workdir(params)
    work.mkdir(parents=True, exist_ok=True)
    server = find_server(params)
    repo = Path(params.publish.repo)
    served = _served_repo(server, repo, models, work)
    log_path = work / "tritonserver.log"
    if (work / STATE_FILE).is_file() and log_path.is_file():  # a server that crashed: keep its log to read
        os.replace(log_path, work / "tritonserver.crashed.log")
    warning = exposure_warning(serve.host, [serve.grpc_port, serve.http_port, serve.metrics_port])
    if warning:
        log.warning(warning)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            _command(server, served, models, params, work),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if foreground and sys.platform == "linux" else None,
        )
    _wait_ready(process, models, params, log_path, timeout)
    state = {
        "pid": process.pid,
        "host": serve.host,
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
        "Triton ready: gRPC %s:%d, HTTP %d, metrics %d; models %s",
        serve.host,
        serve.grpc_port,
        serve.http_port,
        serve.metrics_port,
        ", ".join(models),
    )
    return process, state


def start(params: Params, timeout: float = 120) -> dict[str, Any]:
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
        log.info("Triton (pid %d) drained its requests and stopped on signal %d", state["pid"], stopping[0])
        return 0
    log.error(
        "Triton (pid %d) exited by itself with code %d; see %s:\n%s",
        state["pid"],
        code,
        state["log"],
        _tail(Path(state["log"])),
    )
    return code if code > 0 else 1


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _terminate(pid: int, grace: float = 15) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    if running(pid):
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


def reload(params: Params, models: list[str] | None = None) -> dict[str, Any]:
    """Load `models` (default: all of them) again in the running server: a new version after a publish, or a
    model whose backend process died. Refreshes the bundled server's runtime copy first. A server that does
    not answer or fails to load a model is a ServiceError (a retry may help: the files are in place)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    state = status(params)
    if state is None:
        raise InputError("no Triton server is running from this folder; start one with `sortflow serve`")
    models = models or state["models"]
    repo = Path(state["repo"])
    if not state["stock_triton"]:
        for name in models:
            runtime_model(repo / name, Path(state["served_repo"]) / name)
    address = _http_address(state)
    client = httpclient.InferenceServerClient(address)
    for name in models:
        try:
            client.load_model(name)
        except (InferenceServerException, OSError) as exc:
            raise ServiceError(
                f"the Triton server on {address} (pid {state['pid']}) did not load {name} "
                f"({exc}); see {state['log']}, or restart it with `sortflow serve --stop` and `sortflow serve`"
            ) from exc
    log.info("Loaded %s into the running server", ", ".join(models))
    return state


def reload_if_running(params: Params, models: list[str]) -> bool:
    """After a publish: load these models in the running server (no restart) if one serves `publish.repo`."""
    state = status(params)
    if state is None or Path(state["repo"]) != Path(params.publish.repo).resolve():
        return False
    reload(params, models)
    return True
