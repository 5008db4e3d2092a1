"""dataset convert: one folder per class -> ClsDataset; dataset demo: the bundled digits."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from components.data.cls_dataset import read_labels, read_list
from tests.support.helpers import folder_dataset, snapshot, write_image

Run = Callable[..., tuple[int, str, str]]


def test_convert_writes_cls_dataset_with_hard_links(run_cli: Run, tmp_path: Path) -> None:
    src = folder_dataset(tmp_path / "src", per_class=5)
    write_image(src / "paper" / "nested" / "with space.png", seed=99)
    (src / "paper" / "notes.txt").write_text("not an image")
    (src / "empty").mkdir()
    before = snapshot(src)
    dst = tmp_path / "dst"
    code, out, _ = run_cli("dataset", "convert", str(src), str(dst))
    assert code == 0, out
    assert [(e.index, e.name) for e in read_labels(dst / "label.txt")] == [(0, "glass"), (1, "metal"), (2, "paper")]
    train, val = read_list(dst / "train.txt"), read_list(dst / "val.txt")
    assert (len(train), len(val)) == (13, 3)  # 20% of 5, 5 and 6 images
    assert "images/paper/nested/with space.png" in {e.path for e in train + val}
    first = dst / train[0].path
    assert os.stat(first).st_nlink == 2  # hard link, no copy
    assert snapshot(src) == before
    code, out, _ = run_cli("check-dataset", str(dst), "-o", "dataset.num_workers=1")
    assert code == 0 and "Check dataset passed !" in out


def test_convert_copies_when_asked(run_cli: Run, tmp_path: Path) -> None:
    src = folder_dataset(tmp_path / "src", per_class=2)
    assert run_cli("dataset", "convert", str(src), str(tmp_path / "dst"), "-o", "dataset.link=false")[0] == 0
    image = next((tmp_path / "dst" / "images").rglob("*.jpg"))
    assert os.stat(image).st_nlink == 1


def test_convert_refuses_existing_destination_and_bad_source(run_cli: Run, tmp_path: Path) -> None:
    src = folder_dataset(tmp_path / "src", per_class=2)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, _, err = run_cli("dataset", "convert", str(src), str(dst))
    assert code == 2 and "already exists and is not empty" in err
    assert (dst / "keep.txt").read_text() == "mine" and len(list(dst.iterdir())) == 1
    code, _, err = run_cli("dataset", "convert", str(tmp_path / "nope"), str(tmp_path / "x"))
    assert code == 2 and "source folder not found" in err
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.jpg", seed=1)
    code, _, err = run_cli("dataset", "convert", str(tmp_path / "flat"), str(tmp_path / "y"))
    assert code == 2 and "no class folders with images" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left behind"
