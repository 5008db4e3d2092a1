"""A listed image that leaves the dataset root through a symbolic link: check-dataset fails with its file:line and
never opens it; split, convert and the training loader refuse it. A link that stays inside the root is fine."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import components.data.manifest as manifest
from components.core.errors import DatasetError
from tests.support.helpers import folder_dataset, write_image

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return write_image(tmp_path / "elsewhere" / "secret.jpg", seed=4242)


def _link_in(dataset: Path, outside: Path, name: str = "link.jpg") -> int:
    """Link images/glass/<name> to `outside`, list it in train.txt; its line number."""
    os.symlink(outside, dataset / "images/glass" / name)
    with (dataset / "train.txt").open("a") as f:
        f.write(f"images/glass/{name} 0\n")
    return len((dataset / "train.txt").read_text().splitlines())


def test_check_dataset_fails_on_the_line_and_never_opens_the_target(
    run_cli: Run, dataset: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = _link_in(dataset, outside)
    opened = []
    real_probe = manifest.probe_image
    monkeypatch.setattr(manifest, "probe_image", lambda path: opened.append(path) or real_probe(path))
    code, out, _ = run_cli("check-dataset", str(dataset), "-o", "dataset.num_workers=1")
    assert code == 1
    assert "no path leaves the dataset root" in out and f"train.txt:{line} images/glass/link.jpg" in out
    assert opened and not any(Path(p).resolve() == outside.resolve() for p in opened)
    result = json.loads(Path("output/check_dataset_result.json").read_text())
    assert result["check_pass"] is False


def test_a_link_inside_the_root_is_fine(run_cli: Run, dataset: Path) -> None:
    os.symlink(dataset / "images/glass/glass_3.jpg", dataset / "images/metal/alias.jpg")
    code, out, _ = run_cli("check-dataset", str(dataset), "-o", "dataset.num_workers=1")
    assert code == 0, out  # not listed: nothing to report; listing it would only be a duplicate, a warning


def test_split_and_the_loader_refuse_it(dataset: Path, outside: Path, tmp_path: Path) -> None:
    from components.core.config import SplitParams
    from components.data.loader import read_split
    from components.data.partition import split_into

    line = _link_in(dataset, outside)
    with pytest.raises(DatasetError, match=rf"train.txt:{line}: path 'images/glass/link.jpg' leaves the dataset root"):
        split_into(dataset, tmp_path / "split", SplitParams(enable=True))
    assert not (tmp_path / "split").exists()
    with pytest.raises(DatasetError, match=rf"train.txt:{line}: 'images/glass/link.jpg' leaves the dataset root"):
        read_split(dataset, "train")


def test_convert_refuses_a_link_out_of_the_source(run_cli: Run, tmp_path: Path, outside: Path) -> None:
    src = folder_dataset(tmp_path / "folders")
    os.symlink(outside, src / "glass" / "from_elsewhere.jpg")
    code, _, err = run_cli("dataset", "convert", str(src), str(tmp_path / "out"))
    assert code == 2 and "from_elsewhere.jpg: a symbolic link to" in err and "copy the file in instead" in err
    assert not (tmp_path / "out").exists()
