"""kill -9 at several moments of check-dataset, split, train, register and publish, then the rerun: each ends
where an uninterrupted run does, the registry holds no version without its files, the Triton repository
loads after every kill, and no temporary file is left behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helpers import free_port, overrides, record_figure, tiny_project

pytestmark = pytest.mark.slow

SORTFLOW = str(Path(sys.executable).parent / "sortflow")
FRACTIONS = (0.3, 0.5, 0.7, 0.9)  # of the command's uninterrupted run time
OUTPUTS = {"check-dataset": "output/check_dataset_result.json", "split": "output/split"}


@dataclass
class Project:
    root: Path
    args: list[str]

    def run(self, *argv: str, check: bool = True) -> float:
        began = time.monotonic()
        done = subprocess.run([SORTFLOW, *argv, *self.args], cwd=self.root, capture_output=True, text=True)
        assert not check or done.returncode == 0, (argv, done.stderr[-3000:])
        return time.monotonic() - began

    def kill_after(self, seconds: float, *argv: str) -> bool:
        """Start the command, kill -9 it after `seconds`; False when it had already finished."""
        process = subprocess.Popen(
            [SORTFLOW, *argv, *self.args], cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            process.wait(seconds)
            return False
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True


def _project(root: Path) -> Project:
    return Project(root, tiny_project(root, "train.epochs=3", "train.warmup_epochs=1"))


@dataclass
class Straight:
    project: Project
    times: dict[str, float]  # how long each command took
    outputs: dict[str, object]  # what check-dataset and split wrote, taken right after each ran


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Straight:
    """The uninterrupted run of every command. Training checks the split dataset into dataset.output, so the
    data steps' outputs are taken as they were just after each ran."""
    project = _project(tmp_path_factory.mktemp("straight"))
    times, outputs = {}, {}
    for command in ("check-dataset", "split", "train", "export", "register", "publish"):
        times[command] = project.run(command)
        if command in OUTPUTS:
            outputs[command] = _output(project, command)
    return Straight(project, times, outputs)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return _project(tmp_path_factory.mktemp("crashed"))


def _digests(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.blake2b(p.read_bytes()).hexdigest() for p in files}


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def _comparable(path: Path) -> dict:
    """A check result less what names the folder it ran in."""
    result = json.loads(path.read_text())
    result.pop("dataset_path")
    result["attributes"].pop("label_file")
    result["checks"] = [(c["name"], c["severity"], c["success"]) for c in result["checks"]]
    return result


def _output(project: Project, command: str) -> object:
    if command == "split":
        return _digests(project.root / OUTPUTS[command])
    return _comparable(project.root / OUTPUTS[command])


@pytest.mark.parametrize("command", ["check-dataset", "split"])
def test_data_steps_killed_then_rerun_match_a_straight_run(straight: Straight, crashed: Project, command: str) -> None:
    if command == "split":
        crashed.run("check-dataset")
    killed = 0
    for fraction in FRACTIONS:
        killed += crashed.kill_after(straight.times[command] * fraction, command)
        crashed.run(command)
        assert _temporaries(crashed.root) == [], fraction
        assert _output(crashed, command) == straight.outputs[command], fraction
    record_figure(
        f"kill -9 in {command}, then rerun",
        len(FRACTIONS),
        notes=f"{killed} of {len(FRACTIONS)} killed mid-run (the others had ended); output equals a straight run's",
    )


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_training_killed_then_resumed_ends_where_a_straight_run_does(straight: Straight, crashed: Project) -> None:
    import torch

    project, times = straight.project, straight.times
    crashed.run("check-dataset")
    crashed.run("split")
    expected = _weights(project.root / "output/train/last.pt")
    resumed = 0
    for fraction in FRACTIONS:
        crashed.kill_after(times["train"] * fraction, "train")
        last = crashed.root / "output/train/last.pt"
        if last.is_file():
            resumed += 1
            crashed.run("train", "-o", "train.resume=true")
        else:
            crashed.run("train")  # killed before the first epoch ended: nothing to resume from
        got = _weights(crashed.root / "output/train/last.pt")
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), fraction
        assert _temporaries(crashed.root) == []
    assert resumed >= 2
    record_figure(
        "kill -9 in train, then resume",
        len(FRACTIONS),
        notes=f"{resumed} resumed from last.pt; final weights bit-identical to a straight run's",
    )


def _registry_is_whole(project: Project) -> int:
    """Every version's files download, none is half-registered; returns the number of versions."""
    from mlflow.tracking import MlflowClient

    from components.core.config import load_params
    from components.integrations.mlflow_registry import REGISTERING, champion_version, downloaded

    params = load_params(None, project.args[1::2])
    client = MlflowClient(tracking_uri=params.mlflow.tracking_uri)
    versions = client.search_model_versions("name='sortflow-classifier'")
    assert champion_version(client, "sortflow-classifier") is not None
    for version in versions:
        assert REGISTERING not in version.tags, version.version
        with downloaded(params.mlflow, version):
            pass
    return len(versions)


def test_register_killed_leaves_no_half_registered_version(straight: Straight, crashed: Project) -> None:
    times = straight.times
    for command in ("check-dataset", "split", "train", "export"):
        crashed.run(command)
    killed = 0
    for fraction in FRACTIONS:
        killed += crashed.kill_after(times["register"] * fraction, "register")
        crashed.run("register")
        _registry_is_whole(crashed)
    record_figure(
        "kill -9 in register, then rerun",
        len(FRACTIONS),
        notes=f"{killed} killed mid-run; every version has its files, none half-registered",
    )


def _loads(project: Project) -> None:
    """A real Triton server starts on the repository as it is and every model gets ready."""
    ports = overrides(*(f"serve.{k}={free_port()}" for k in ("grpc_port", "http_port", "metrics_port")))
    project.run("serve", *ports)
    project.run("serve", "--stop", *ports)


def test_publish_killed_leaves_a_repository_that_loads(straight: Straight, crashed: Project) -> None:
    times = straight.times
    if not (crashed.root / "triton_repo").is_dir():
        for command in ("check-dataset", "split", "train", "export", "register"):
            crashed.run(command)
        crashed.run("publish")
    crashed.run("register", "-o", "register.min_improvement=-1")  # a new champion: publish has work to do
    killed = 0
    for fraction in FRACTIONS:
        killed += crashed.kill_after(times["publish"] * fraction, "publish")
        _loads(crashed)
        crashed.run("publish")
        _loads(crashed)
        assert _temporaries(crashed.root / "triton_repo") == []
    record_figure(
        "kill -9 in publish",
        len(FRACTIONS),
        notes=f"{killed} killed mid-run; Triton loaded the repository after every kill and rerun",
    )


def test_two_publish_at_once_are_serialised(straight: Straight, crashed: Project) -> None:
    """Two `sortflow publish` (a scheduled flow and a person, say) while a third run holds the repository:
    each waits, told who holds the lock, then they run one after the other, and the repository loads."""
    from components.core.locks import output_lock

    if not (crashed.root / "triton_repo").is_dir():
        for command in ("check-dataset", "split", "train", "export", "register", "publish"):
            crashed.run(command)
    logs = [crashed.root / f"publish-{i}.log" for i in range(2)]
    with contextlib.ExitStack() as files, output_lock(crashed.root / "triton_repo", "test holder"):
        runs = [
            subprocess.Popen(
                [SORTFLOW, "publish", *crashed.args], cwd=crashed.root, stderr=files.enter_context(log.open("w"))
            )
            for log in logs
        ]
        deadline = time.monotonic() + 120
        while not all(f"being written by pid {os.getpid()}" in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(run.poll() is None for run in runs)
            time.sleep(0.2)
    assert [run.wait(120) for run in runs] == [0, 0]
    assert all("test holder" in log.read_text() for log in logs)
    _loads(crashed)
    record_figure("two publish at once", 2, notes="each waited for the lock of publish.repo, told its holder")


def test_a_kill_while_mlflow_makes_its_sqlite_store_leaves_none_or_a_whole_one(tmp_path: Path) -> None:
    """MLflow migrates a new SQLite store in dozens of steps; killed among them, it must not leave a database
    that every later run fails on (the crash matrix once hit this under load)."""
    from mlflow.tracking import MlflowClient

    from components.integrations.mlflow_tracking import create_sqlite_store

    make = "import sys; from components.integrations.mlflow_tracking import create_sqlite_store as c; c(sys.argv[1])"
    for i, delay in enumerate((0.8, 1.6, 2.0, 2.5, 3.0)):  # python and mlflow import in about 1 s, then migrate
        uri = f"sqlite:///{tmp_path}/db{i}/mlflow.db"
        process = subprocess.Popen([sys.executable, "-c", make, uri], cwd=Path(__file__).parents[2])
        time.sleep(delay)
        process.kill()
        process.wait()
        create_sqlite_store(uri)  # what the next run does first
        client = MlflowClient(tracking_uri=uri)
        assert client.get_experiment_by_name("Default") is not None, delay
        assert [p.name for p in (tmp_path / f"db{i}").iterdir()] == ["mlflow.db"], delay  # no temporary file left
