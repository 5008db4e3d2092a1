"""Atomic outputs: whole or not at all, and with the permissions the user's umask gives (not the 0600/0700 of
temporary files), so that a Triton server running as another user can read a published model."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from components.core.fsutil import atomic_write_text, staged_dir, umask


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_outputs_get_the_permissions_of_the_umask(tmp_path: Path, mask: int) -> None:
    previous = os.umask(mask)
    try:
        assert umask() == mask
        written = atomic_write_text(tmp_path / "a" / "report.json", "{}")
        with staged_dir(tmp_path / "model" / "1") as stage:
            atomic_write_text(stage / "config.pbtxt", "x")
            (stage / "sub").mkdir()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "model" / "1").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "model/1/config.pbtxt").stat().st_mode) == 0o666 & ~mask
    assert not list(tmp_path.rglob(".*.tmp")) and not list(tmp_path.rglob(".*.old"))


def test_a_failed_stage_leaves_the_old_folder_whole(tmp_path: Path) -> None:
    with staged_dir(tmp_path / "out") as stage:
        atomic_write_text(stage / "kept.txt", "old")
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "out", replace=True) as stage:
        atomic_write_text(stage / "kept.txt", "new")
        raise RuntimeError("interrupted")
    assert (tmp_path / "out/kept.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_replaced_folder_is_never_missing(tmp_path: Path) -> None:
    """Readers of a folder that is replaced (a report, a runtime model copy) find the old or the new one whole,
    never no folder: the swap is one atomic exchange."""
    import threading

    final = tmp_path / "model"
    with staged_dir(final) as stage:
        atomic_write_text(stage / "version.txt", "0")
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append((final / "version.txt").read_text())
            except FileNotFoundError:
                seen.append("missing")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 201):
            with staged_dir(final, replace=True) as stage:
                atomic_write_text(stage / "version.txt", str(i))
    finally:
        stop.set()
        reader.join()
    assert "missing" not in seen and len(seen) > 200
    assert (final / "version.txt").read_text() == "200"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no old copy or stage left behind
