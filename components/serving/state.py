"""The state of a Triton server that `sortflow serve` started: written to `serve.workdir/server.json` once it
is ready, read by every later command. The pid is recorded with the process's start time, so a pid that the
system has since given to another process is never taken for the server (nor signalled)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from components.core.errors import InputError
from components.core.fsutil import atomic_write_json
from components.core.procs import running, start_time

STATE_FILE = "server.json"


@dataclass(frozen=True)
class ServerState:
    pid: int
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int
    repo: str  # publish.repo, resolved
    served_repo: str  # what Triton serves: repo itself, or the bundled server's runtime copy
    models: list[str]
    log: str
    stock_triton: bool  # has the onnxruntime backend
    started: int | None = None  # the process's start time (core.procs.start_time); None: an older release's file

    @property
    def http_address(self) -> str:
        """host:port where this machine reaches the HTTP endpoint."""
        return f"{client_host(self.host)}:{self.http_port}"

    def alive(self) -> bool:
        """Whether the process this state names still runs: the same pid with the same start time (a state
        written by an earlier release, without the time, goes by the pid alone)."""
        return running(self.pid) and self.started in (None, start_time(self.pid))


def client_host(host: str) -> str:
    """Where this machine's clients reach a server listening on `host` (every address: the loopback one)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def read_state(workdir: Path) -> ServerState | None:
    """The state recorded in `workdir`, or None; a file that is not one is an error naming it."""
    path = workdir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return ServerState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: not a server state written by `sortflow serve` ({exc}); stop the server by hand and remove it"
        ) from None


def write_state(workdir: Path, state: ServerState) -> Path:
    """Record `state` in `workdir` (whole or not at all)."""
    return atomic_write_json(workdir / STATE_FILE, dataclasses.asdict(state))
