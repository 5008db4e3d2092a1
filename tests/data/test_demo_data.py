"""The bundled demo dataset: real digits, deterministic to the byte, matching the committed data.dvc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from components.data.cls_dataset import read_labels, read_list
from components.steps.demo_data import build_demo_dataset
from tests.support.helpers import snapshot

REPO = Path(__file__).resolve().parents[2]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    build_demo_dataset(root)
    return root


def test_demo_is_a_real_balanced_dataset(demo: Path) -> None:
    labels = read_labels(demo / "label.txt")
    assert [e.name for e in labels][:3] == ["zero", "one", "two"] and len(labels) == 10
    train, val = read_list(demo / "train.txt"), read_list(demo / "val.txt")
    assert len(train) + len(val) == 1797  # every digit of scikit-learn's set
    assert {e.label for e in val} == set(range(10))


def test_demo_is_byte_identical(demo: Path, tmp_path: Path) -> None:
    again = tmp_path / "data"
    build_demo_dataset(again)
    assert snapshot(again) == snapshot(demo)


def test_demo_refuses_to_overwrite_without_force(run_cli: Run, demo: Path, tmp_path: Path) -> None:
    target = tmp_path / "data"
    assert run_cli("dataset", "demo", str(target))[0] == 0
    code, _, err = run_cli("dataset", "demo", str(target))
    assert code == 2 and "pass --force" in err
    (target / "label.txt").write_text("edited")
    assert run_cli("dataset", "demo", str(target), "--force")[0] == 0
    assert snapshot(target) == snapshot(demo)


def test_demo_passes_check_dataset(run_cli: Run, demo: Path) -> None:
    code, out, _ = run_cli("check-dataset", str(demo))
    assert code == 0 and "Check dataset passed !" in out


def test_committed_data_dvc_tracks_the_demo(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a fresh clone and `sortflow dataset demo data/`, `dvc status data.dvc` is clean."""
    from components.cli import main

    dvc_file = yaml.safe_load((REPO / "data.dvc").read_text())
    assert dvc_file["outs"][0]["path"] == "data"
    assert dvc_file["outs"][0]["nfiles"] == len(snapshot(demo))
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True)
    shutil.copy(REPO / "data.dvc", clone / "data.dvc")  # the working tree's, in case it is not committed yet
    shutil.copytree(REPO / ".dvc", clone / ".dvc", dirs_exist_ok=True, ignore=shutil.ignore_patterns("cache", "tmp"))
    monkeypatch.chdir(clone)
    assert main(["dataset", "demo", "data"]) == 0
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", "data.dvc"], env=env, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    assert snapshot(clone / "data") == snapshot(demo)
