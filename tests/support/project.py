"""Temporary git copies of the project on tiny data and tiny parameters, for tests and benchmarks that run
the pipelines for real."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

from components.core.config import load_params
from tests.support.helpers import TINY_TRAIN, cls_dataset
from tests.support.services import sh

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
