"""Temporary git copies of the project on tiny data, a real local Prefect server, and the team stack
(PostgreSQL, MLflow and Prefect servers on it: services.py)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from components.core.config import load_params
from tests.helpers import TINY_TRAIN, cls_dataset
from tests.orchestration.services import (  # noqa: F401 (fixtures)
    command_env,
    mlflow_server,
    postgres,
    prefect_pg_server,
    running_prefect,
    sh,
    startup_summary,
    stop_group,
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    startup_summary(terminalreporter)


ROOT = Path(__file__).resolve().parents[2]
MODEL = "sortflow-classifier"  # register.model_name
TINY_PIPELINE = (
    *TINY_TRAIN,
    "train.epochs=1",
    "train.pretrained=none",
    "dataset.sample_num=2",
    "export.parity_images=8",
)


def project_copy(dst: Path, *extra: str, data: bool = True, base: Sequence[str] = TINY_PIPELINE) -> Path:
    """The project's files (as git sees them) in a new git repository, on a tiny dataset and tiny params
    (params.yaml with the `base` and `extra` overrides written in).

    The dataset is tracked by DVC with a local-folder remote beside the copy (`../dvc-remote`); everything
    is committed. Put each copy in its own folder.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        if rel.startswith(("data/", "tests/")) or rel in ("dvc.lock", "data.dvc") or not (ROOT / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    params = load_params(ROOT / "params.yaml", [*base, *extra])
    (dst / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], dst)
    sh(["git", "config", "user.email", "ci@sortflow.invalid"], dst)
    sh(["git", "config", "user.name", "sortflow tests"], dst)
    # Relative, so that copies made alike are byte-identical trees with the same commit hash.
    sh(["dvc", "remote", "add", "-f", "-d", "local", "../dvc-remote"], dst)
    if data:
        cls_dataset(dst / "data", per_class=8, val_per_class=3)
        sh(["dvc", "add", "-q", "data"], dst)
    sh(["git", "add", "-A"], dst)
    stamp = "2026-01-01T00:00:00+00:00"
    sh(["git", "commit", "-q", "-m", "project copy on tiny data"], dst, GIT_AUTHOR_DATE=stamp, GIT_COMMITTER_DATE=stamp)
    return dst


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
