"""A released model for the serving tests: trained on tiny data, exported, registered and published once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.cli import main
from tests.support.helpers import TINY_TRAIN, cls_dataset, free_port, overrides
from tests.support.overrides import without_published


@dataclass
class Release:
    workdir: Path
    dataset: Path
    args: list[str]  # the -o overrides every command of this release uses

    def run(self, *argv: str) -> int:
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            return main([*argv, *(self.serve_args() if argv[0] == "serve" else self.args)])
        finally:
            os.chdir(cwd)

    def serve_args(self) -> list[str]:
        return without_published(self.args)


@pytest.fixture(scope="package")
def released(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """Trained, evaluated (calibrated), exported, registered and published once for the whole package."""
    workdir = tmp_path_factory.mktemp("release")
    dataset = cls_dataset(workdir / "ds", per_class=8, val_per_class=3)
    rel = Release(
        workdir,
        dataset,
        overrides(
            f"dataset.dir={dataset}",
            *TINY_TRAIN,
            "train.epochs=1",
            f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
            f"publish.repo={workdir}/triton_repo",
        ),
    )
    for step in ("train", "evaluate", "export", "register", "publish"):
        assert rel.run(step) == 0, step
    return rel


@pytest.fixture(scope="module")
def release(released: Release) -> Release:
    """The package's release with a list of overrides of this module's own (its server's ports, its limits)."""
    return Release(released.workdir, released.dataset, list(released.args))


@pytest.fixture(scope="module")
def server(release: Release) -> Iterator[dict]:
    """A real Triton server (the one in nvidia-pytriton) on free ports; stopped afterwards."""
    from components.core.config import load_params
    from components.steps import serve

    ports = [
        "-o",
        f"serve.grpc_port={free_port()}",
        "-o",
        f"serve.http_port={free_port()}",
        "-o",
        f"serve.metrics_port={free_port()}",
    ]
    release.args += ports
    assert release.run("serve") == 0
    cwd = os.getcwd()
    os.chdir(release.workdir)
    try:
        params = load_params(None, release.args[1::2])
        state = serve.status(params)
    finally:
        os.chdir(cwd)
    assert state is not None
    yield dataclasses.asdict(state)
    assert release.run("serve", "--stop") == 0
    with pytest.raises(OSError):
        os.kill(state.pid, 0)  # no process left behind
