"""One writer per output: concurrent runs are serialised by a lock that names its holder, and a lock left by
a killed process is taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.core.locks import lock_path, output_lock
from tests.support.helpers import record_figure

ROOT = Path(__file__).resolve().parents[2]

# A writer that takes the lock, then appends "start" and "end" lines with a pause between them: interleaved
# lines would show two writers at once.
WRITER = """
import logging, sys, time
from components.core.locks import output_lock
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
output, journal, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
with output_lock(output, "test writer"):
    with open(journal, "a") as f:
        f.write(f"start {sys.argv[4]}\\n"); f.flush(); time.sleep(pause); f.write(f"end {sys.argv[4]}\\n")
"""


def _writer(tmp_path: Path, name: str, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "out"), str(tmp_path / "journal"), str(pause), name],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_holder(tmp_path: Path) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = lock_path(tmp_path / "out").read_text() if lock_path(tmp_path / "out").is_file() else ""
        if text:
            return json.loads(text)
        time.sleep(0.05)
    raise AssertionError("the first writer never took the lock")


def test_concurrent_writers_are_serialised_and_told_who_holds_the_lock(tmp_path: Path) -> None:
    first = _writer(tmp_path, "a", 1.5)
    holder = _wait_for_holder(tmp_path)
    second = _writer(tmp_path, "b", 0)
    assert first.wait(60) == 0 and second.wait(60) == 0
    assert (tmp_path / "journal").read_text().splitlines() == ["start a", "end a", "start b", "end b"]
    message = second.stderr.read()
    assert f"being written by pid {holder['pid']}" in message and "test writer" in message, message
    assert holder["since"] and holder["host"]
    assert not lock_path(tmp_path / "out").exists()  # a clean end leaves no lock file
    record_figure("concurrent writers of one output", 2, notes="serialised, holder named")


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    victim = _writer(tmp_path, "killed", 60)
    holder = _wait_for_holder(tmp_path)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="components.core.locks"), output_lock(tmp_path / "out", "rerun"):
        pass
    assert time.monotonic() - started < 5  # the kernel dropped the dead holder's lock: no waiting
    assert f"left by pid {holder['pid']}" in caplog.text and "no longer running" in caplog.text
    record_figure("lock left by kill -9", 1, notes="taken over at once, reported stale")


def test_a_wait_longer_than_locks_timeout_fails_naming_the_holder(tmp_path: Path, run_cli) -> None:
    """A step that cannot get its output's lock within locks.timeout fails with the holder's pid and command,
    and writes nothing."""
    from components.core.errors import ServiceError

    holder_process = _writer(tmp_path, "long", 30)
    try:
        holder = _wait_for_holder(tmp_path)
        with pytest.raises(
            ServiceError,
            match=rf"still being written by pid {holder['pid']} .*test writer.*"
            r"after 0.5 s: .*raise locks.timeout",
        ), output_lock(tmp_path / "out", "second", timeout=0.5):
            raise AssertionError("got a lock that is held")
        code, _, err = run_cli("evaluate", "-o", f"evaluate.output={tmp_path / 'out'}", "-o", "locks.timeout=0.5")
        assert code == 2 and f"pid {holder['pid']}" in err and "locks.timeout" in err
    finally:
        holder_process.kill()
        holder_process.wait(10)
    assert (tmp_path / "journal").read_text() == "start long\n"
