"""The Triton server process: which binary runs (a stock Triton, or the one bundled in nvidia-pytriton), the
repository it serves, its command line, and how it is stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from components.core.config import Params
from components.core.errors import InputError
from components.core.fsutil import staged_dir
from components.core.procs import running
from components.integrations.triton_config import BYTES, model_source, parse_config


@dataclass(frozen=True)
class Server:
    binary: Path
    backends: Path
    env: dict[str, str]
    serves_onnx: bool  # has the onnxruntime backend


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
    copy = Path(params.serve.workdir) / "tritonserver"
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


def repo_models(repo: Path) -> list[str]:
    """The models of a repository, those that call others (`<model>_bytes`) last."""
    names = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()) if repo.is_dir() else []
    # The encoded-image models last: they call the classifiers.
    return sorted(names, key=lambda n: n.endswith(BYTES))


def served_repo(server: Server, repo: Path, models: list[str], work: Path) -> Path:
    """`repo` itself for a stock Triton; else a runtime copy whose ONNX models run in the python backend."""
    if server.serves_onnx:
        return repo.resolve()
    served = (work / "runtime_repo").resolve()
    shutil.rmtree(served, ignore_errors=True)
    served.mkdir(parents=True)
    for name in models:
        runtime_model(repo / name, served / name)
    return served


def command(server: Server, served: Path, models: list[str], params: Params, work: Path) -> list[str]:
    """The `tritonserver` command line: explicit model control, the ports and addresses of `serve.*`."""
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


def die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the supervising process dies (even by kill -9)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def terminate(pid: int, grace: float = 15) -> None:
    """SIGTERM to the server's process group, SIGKILL after `grace` seconds; reaps it when it is our child."""
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


