"""Shared fixtures."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.helpers import RELIABILITY_LOG, cls_dataset

# Hypothesis keeps its examples under the current folder unless told otherwise: tests write nothing into the tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "sortflow-hypothesis"))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _share_the_cores() -> None:
    """Under xdist, each worker's thread pools (torch's OpenMP, OpenBLAS) get its share of the cores, and so do
    the commands and servers its tests start, which inherit the variable. Pools as wide as the machine in every
    worker make OpenMP's threads spin against each other: two copies of the production-gate test side by side
    on 2 cores took 230 s each with the default pools and 109 s with one thread each. Set before torch loads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))


_share_the_cores()


# The test folders in the order they run: end to end first, unit tests last. With two workers (`make test`), the
# files that take minutes then start early and the many short ones fill both workers to the end; xdist's own
# order (the files with the most tests first) left one worker running the loop test alone for its last minutes.
RUN_ORDER = ("orchestration", "reliability", "model", "serving", "data", "code", "containers")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests sorted by their folder's place in RUN_ORDER (others last); within a folder, as collected."""
    tests = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        folder = item.path.relative_to(tests).parts[0] if item.path.is_relative_to(tests) else ""
        return RUN_ORDER.index(folder) if folder in RUN_ORDER else len(RUN_ORDER)

    items.sort(key=rank)


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


def _controller(config: pytest.Config) -> bool:
    """The process that runs the session: pytest itself, or with xdist (`-n`) the controller, not a worker."""
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if _controller(session.config):  # before any worker starts: the figures of this session only
        RELIABILITY_LOG.unlink(missing_ok=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Workers hand their servers' start-up times to the controller, which writes the reliability table."""
    from tests.support.services import STARTUP_TIMES, collect_startup_times

    if not _controller(session.config):
        session.config.workeroutput["startup_times"] = dict(STARTUP_TIMES)
        return
    collect_startup_times(STARTUP_TIMES)
    _reliability_table()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist: a worker finished; keep its servers' start-up times for the summary."""
    from tests.support.services import collect_startup_times

    collect_startup_times(getattr(node, "workeroutput", {}).get("startup_times", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.support.services import startup_summary

    startup_summary(terminalreporter)


def _reliability_table() -> None:
    """The figures the reliability tests recorded (`record_figure`, from every worker), as the Markdown table
    of RELIABILITY.md: bench/out/reliability.md."""
    if not RELIABILITY_LOG.is_file():
        return
    rows = [json.loads(line) for line in RELIABILITY_LOG.read_text().splitlines()]
    lines = ["| what | tried | handled | failed | notes |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {row['kind']} | {row['tried']} | {row['handled']} | {row['failed']} | {row.get('notes', '')} |"
        )
    (RELIABILITY_LOG.parent / "reliability.md").write_text("\n".join(lines) + "\n")
