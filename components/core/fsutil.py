"""Atomic writes: outputs appear whole or not at all, durably, with the permissions the user's umask gives.

Temporary files and folders are created private (0600/0700) by the standard library; outputs are made
readable as any file the user creates would be, so that a Triton server running as another user, or anyone
sharing the folder, can read them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.core.procs import running


def file_digest(path: str | os.PathLike[str]) -> str:
    """A content hash of the file's bytes (BLAKE2b, 128 bits)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def umask() -> int:
    """The process's umask, read without changing it where Linux allows (a set-and-restore is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in `folder` durable (a power loss cannot undo it)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner() -> str:
    """The host and pid that temporary names carry, so that a later run can tell its own from a dead one's."""
    return f"{socket.gethostname().replace('.', '-')}.{os.getpid()}"


def clear_stale(final: Path) -> None:
    """Remove the temporary siblings of `final` (.NAME.HOST.PID.*.tmp/.old) left by a process of this host that
    no longer runs (killed with -9 mid-write): a rerun leaves no temporary file behind."""
    host = socket.gethostname().replace(".", "-")
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.{re.escape(host)}\.(\d+)\..*\.(tmp|old)$")
    try:
        siblings = list(os.scandir(final.parent))
    except OSError:
        return
    for entry in siblings:
        match = pattern.match(entry.name)
        if match and not running(int(match.group(1))):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to a temporary sibling, flush it to disk, and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the content is on disk before the name points at it
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], link: bool = True) -> None:
    """Hard-link `src` to `dst` (creating folders), or copy it where links are not possible or wanted."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
    shutil.copy2(src, dst)


def _sync_tree(root: Path) -> None:
    """Flush a staged folder's new files and its folders to disk before it is renamed into place. Hard links
    to existing files (a split dataset's images) are already on disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.stat(path).st_nlink == 1:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(folder)


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE): neither name is ever missing.

    False where the system or the filesystem cannot (no renameat2, or EINVAL/ENOSYS); other errors raise.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


def _replace_dir(stage: Path, final: Path) -> None:
    """Put `stage` in the place of the folder `final`, so that a reader always finds a whole folder there."""
    if exchange(stage, final):
        shutil.rmtree(stage)  # the old folder, now under the stage's name
        return
    # No atomic exchange here (not Linux, or a filesystem without it): the old folder is moved aside first,
    # so `final` is missing for the moment between the two renames.
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_owner()}.", suffix=".old", dir=final.parent))
    os.replace(final, old / final.name)
    os.replace(stage, final)
    shutil.rmtree(old)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """Yield an empty sibling folder of `final`; on success it is renamed to `final`.

    With `replace`, an existing `final` is swapped for the new one in one step, only after the new one is
    complete (readers see the old folder or the new one, never neither). On any error the staged folder is
    removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(final)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_owner()}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(stage, 0o777 & ~umask())
        yield stage
        _sync_tree(stage)
        if final.exists() and replace:
            _replace_dir(stage, final)
        else:
            os.rename(stage, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
