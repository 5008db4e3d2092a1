"""One writer at a time for each output: a scheduled flow and a manual `dvc repro`, or two `publish` runs,
are serialised, never interleaved.

A step holds an exclusive `flock` on `.<output>.lock` beside its output while it runs; the file names the
holder (pid, host, command, since). A second run waits for the lock, saying who holds it. The kernel drops a
lock whose process died (kill -9 too), so a lock left by a killed run is taken over at once; the holder it
names is reported as stale. The lock files stay (empty) between runs: removing one while another run waits
on it would let two runs in.
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

log = logging.getLogger(__name__)

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


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str], step: str) -> Iterator[None]:
    """Hold the lock of `output` (a file or folder) for `step`, waiting while another run holds it."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            log.warning("%s is being written by %s; waiting for it to finish", output, describe(holder))
            started = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("Got the lock of %s after %.1f s", output, time.monotonic() - started)
        stale = _holder(fd)  # a holder that ended cleanly emptied the file: one named here was killed
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
            os.ftruncate(fd, 0)  # an end, by success or error, leaves no holder behind; a killed run leaves its name
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
            with output_lock(output, f"sortflow {step.__name__}"):
                return step(params, *args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate
