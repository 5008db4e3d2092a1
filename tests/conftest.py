"""Shared fixtures."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.helpers import RELIABILITY_LOG, cls_dataset

# Hypothesis keeps its examples under the current folder unless told otherwise: tests write nothing into the tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "sortflow-hypothesis"))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return cls_dataset(tmp_path / "ds")


@pytest.fixture
def run_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run `sortflow ARGS` in-process from an empty folder (no params.yaml) and return (code, out, err)."""
    from components.cli import main

    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session", autouse=True)
def reliability_table() -> Iterator[None]:
    """The figures the reliability tests record (`record_figure`), as the Markdown table of RELIABILITY.md:
    bench/out/reliability.md, written at the end of a session that recorded any."""
    RELIABILITY_LOG.unlink(missing_ok=True)
    yield
    if not RELIABILITY_LOG.is_file():
        return
    rows = [json.loads(line) for line in RELIABILITY_LOG.read_text().splitlines()]
    lines = ["| what | tried | handled | failed | notes |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {row['kind']} | {row['tried']} | {row['handled']} | {row['failed']} | {row.get('notes', '')} |"
        )
    (RELIABILITY_LOG.parent / "reliability.md").write_text("\n".join(lines) + "\n")
