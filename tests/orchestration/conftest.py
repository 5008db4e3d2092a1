"""Temporary git copies of the project on tiny data, a real local Prefect server, and the team stack
(PostgreSQL, MLflow and Prefect servers on it: services.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.project import project_copy
from tests.support.services import (  # noqa: F401 (fixtures)
    command_env,
    mlflow_server,
    postgres,
    prefect_pg_server,
    running_prefect,
    sh,
    stop_group,
)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server (SQLite) on a free port; its API URL. Stopped, with its children, afterwards."""
    with running_prefect("Prefect server on SQLite", tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


@pytest.fixture(scope="session")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """A project copy after one `dvc repro`, what it printed, and a copy of its results at that point
    (`output/` and `triton_repo/`; later tests run experiments in the project)."""
    root = tmp_path_factory.mktemp("dvc-path")
    project = project_copy(root / "project")
    printed = sh(["dvc", "repro"], project)
    results = root / "results"
    for name in ("output", "triton_repo"):
        shutil.copytree(project / name, results / name, ignore=shutil.ignore_patterns("*.pt"))
    return project, printed, results


@pytest.fixture(scope="session")
def flow_project(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> tuple[Path, str]:
    """A project copy after one `sortflow run` (training-pipeline) against the real Prefect server."""
    project = project_copy(tmp_path_factory.mktemp("prefect-path") / "project")
    return project, sh(["sortflow", "run"], project, PREFECT_API_URL=prefect_server)
