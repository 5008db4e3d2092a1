"""One writer at a time for each output: a scheduled flow and a manual `dvc repro`, or two `publish` runs,
are serialised, never interleaved.

A step holds an exclusive `flock` on `.<output>.lock` beside its output while it runs; the file names the
holder (pid, host, command, since). A second run waits for the lock, saying who holds it, for at most
`locks.timeout` seconds; then it fails naming the holder. The kernel drops a
lock whose process died (kill -9 too), so a lock left by a killed run is taken over at once; the holder it
names is reported as stale. A run that ends, by success or error, removes the lock file while it still
holds it; a waiting run then finds the file gone and locks the new one, so no two runs ever hold a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from components.core.errors import ServiceError

log = logging.getLogger(__name__)
POLL = 0.2  # seconds between tries while another run holds a lock

F = TypeVar("F", bound=Callable[..., Any])


def lock_path(output: str | os.PathLike[str]) -> Path:
    output = Path(output).absolute()
    return output.parent / f".{output.name}.lock"


def _holder(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode("utf-8", "replace").strip()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return {"pid": "?", "command": text[:200], "since": "?", "host": "?"}


def describe(holder: dict[str, Any] | None) -> str:
    """The holder as a message names it."""
    if holder is None:
        return "another run"
    return f"pid {holder['pid']} on {holder['host']} ({holder['command']}, since {holder['since']})"


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the open file `fd` (a holder that ended may have removed it meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _acquire(path: Path, output: str | os.PathLike[str], timeout: float) -> int:
    """An open descriptor of the lock file of `output`, locked; waits (once saying for whom) while it is held,
    for at most `timeout` seconds (0: no limit)."""
    told = False
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = describe(_holder(fd))
                if timeout and time.monotonic() >= deadline:
                    os.close(fd)
                    raise ServiceError(
                        f"{output} is still being written by {holder} after {timeout:g} s: wait for it to finish, "
                        "stop it, or raise locks.timeout"
                    ) from None
                if not told:
                    log.warning("%s is being written by %s; waiting for it to finish", output, holder)
                    told = True
                time.sleep(POLL)
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder removed the file as it ended: lock the one that is there now


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str], step: str, timeout: float = 0) -> Iterator[None]:
    """Hold the lock of `output` (a file or folder) for `step`, waiting while another run holds it, for at most
    `timeout` seconds (0: no limit); then a ServiceError names the holder."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fd = _acquire(path, output, timeout)
    try:
        if time.monotonic() - started > 1:
            log.info("Got the lock of %s after %.1f s", output, time.monotonic() - started)
        stale = _holder(fd)  # a holder that ended removed the file: one named here was killed
        if stale is not None:
            log.warning("Took over the lock of %s left by %s, which is no longer running", output, describe(stale))
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": f"{step}: {' '.join(sys.argv)}"[:500],
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still locked: a run waiting on this file sees it gone and retries
    finally:
        os.close(fd)  # closing drops the lock


def locked(key: str) -> Callable[[F], F]:
    """Decorate a step `step(params, ...)` so that it holds the lock of its output `key` (a params.yaml
    name such as "publish.repo") while it runs; an empty output path takes no lock."""
    section, name = key.split(".")

    def decorate(step: F) -> F:
        @functools.wraps(step)
        def run(params: Any, *args: Any, **kwargs: Any) -> Any:
            output = getattr(getattr(params, section), name)
            if not output:
                return step(params, *args, **kwargs)
            with output_lock(output, f"sortflow {step.__name__}", params.locks.timeout):
                return step(params, *args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate
