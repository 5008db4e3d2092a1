"""Whether a process still runs: for a server's state file, a killed registration, a dead writer's temporaries."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def running(pid: int) -> bool:
    """Whether process `pid` of this machine runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/PID/stat): with the pid, it names one
    process, where a pid alone may since have been given to another. None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22; the name in parentheses may hold spaces


def gone(host: str, pid: int) -> bool:
    """Whether process `pid` of `host` is known to have ended: only a process of this machine can be checked."""
    return host == socket.gethostname() and not running(pid)
