"""No credential set in the environment shows up in any output: fake secrets are planted, the whole training
pipeline runs as a Prefect flow (its artifacts and logs go to the Prefect server's database), and every file
it wrote, its terminal output and the MLflow store are searched for them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import record_figure, tiny_project

pytestmark = pytest.mark.slow

SORTFLOW = str(Path(sys.executable).parent / "sortflow")
SECRETS = {
    "MLFLOW_TRACKING_USERNAME": "sf-user-7c1e",
    "MLFLOW_TRACKING_PASSWORD": "sf-password-b91f2c",
    "MLFLOW_TRACKING_TOKEN": "sf-token-55d0aa",
    "AWS_ACCESS_KEY_ID": "AKIASFTEST0000000001",
    "AWS_SECRET_ACCESS_KEY": "sf-aws-secret-3e8f0d9b",
    "PREFECT_API_KEY": "pnu_sfprefectkey0123456789",
}


def _found(root: Path, texts: list[str]) -> list[str]:
    hits = []
    for path in (p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [f"{path}: {name}" for name, value in SECRETS.items() if value.encode() in data]
    for text in texts:
        hits += [f"terminal: {name}" for name, value in SECRETS.items() if value in text]
    return hits


def test_planted_secrets_appear_in_no_output(tmp_path: Path) -> None:
    args = tiny_project(tmp_path, "train.epochs=1")
    env = {**os.environ, **SECRETS, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    texts = []
    for argv in (["run", "training-pipeline", "--force"], ["params"], ["summary"], ["history"]):
        done = subprocess.run([SORTFLOW, *argv, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr[-3000:])
        texts += [done.stdout, done.stderr]
    assert (tmp_path / "triton_repo/sortflow-classifier/1/model.onnx").is_file()
    assert list((tmp_path / "prefect").rglob("*.db"))  # the Prefect server's database was searched too
    hits = _found(tmp_path, texts)
    assert hits == []
    record_figure(
        "secrets planted in the environment",
        len(SECRETS),
        failed=len(hits),
        notes="found 0 times in files, MLflow and Prefect databases, terminal output",
    )


def test_a_password_in_the_tracking_uri_is_masked(tmp_path: Path) -> None:
    uri = "http://sf-user:sf-uri-password-77@127.0.0.1:1/"
    texts = []
    for argv in (["params"], ["compare"]):
        done = subprocess.run(
            [SORTFLOW, *argv, "-o", f"mlflow.tracking_uri={uri}"], cwd=tmp_path, capture_output=True, text=True
        )
        texts += [done.stdout, done.stderr]
    assert "sf-uri-password-77" not in "".join(texts)
    assert "http://sf-user:***@127.0.0.1:1/" in "".join(texts)
    assert "cannot be reached" in texts[3]  # compare: the server is named, without its password
