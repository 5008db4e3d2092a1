"""Split: stratified, reproducible to the byte, originals kept as .bak, bad input changes nothing."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from components.core.config import SplitParams
from components.core.errors import DatasetError
from components.data.cls_dataset import read_list
from components.data.partition import split_dataset, stratified_split
from tests.support.helpers import cls_dataset, snapshot

Run = Callable[..., tuple[int, str, str]]


def test_stratified_split_keeps_class_shares() -> None:
    rows = [(f"c{c}/{i}.jpg", c) for c in range(3) for i in range(10 * (c + 1))]
    train, val = stratified_split(rows, 80, 20, seed=1)
    assert Counter(label for _, label in val) == {0: 2, 1: 4, 2: 6}
    assert sorted(train + val) == sorted(rows)
    assert not set(train) & set(val)


def test_split_is_deterministic_and_order_independent() -> None:
    rows = [(f"c{c}/{i}.jpg", c) for c in range(4) for i in range(25)]
    a = stratified_split(rows, 70, 30, seed=3)
    b = stratified_split(list(reversed(rows)), 70, 30, seed=3)
    c = stratified_split(rows, 70, 30, seed=4)
    assert a == b
    assert a[1] != c[1]


def test_small_classes_keep_an_image_on_each_side() -> None:
    rows = [("a/0.jpg", 0), ("a/1.jpg", 0), ("b/0.jpg", 1)]
    train, val = stratified_split(rows, 99, 1, seed=0)
    assert ("b/0.jpg", 1) in train
    assert [r for r in val if r[1] == 0]


def test_split_dataset_is_byte_identical_and_keeps_bak(tmp_path: Path) -> None:
    a = cls_dataset(tmp_path / "a", per_class=10)
    b = cls_dataset(tmp_path / "b", per_class=10)
    original = (a / "train.txt").read_bytes(), (a / "val.txt").read_bytes()
    params = SplitParams(train_percent=70, val_percent=30, seed=11)
    result = split_dataset(a, params)
    split_dataset(b, params)
    assert (result.train, result.val, result.classes) == (21, 9, 3)
    assert (a / "train.txt").read_bytes() == (b / "train.txt").read_bytes()
    assert (a / "val.txt").read_bytes() == (b / "val.txt").read_bytes()
    assert ((a / "train.txt.bak").read_bytes(), (a / "val.txt.bak").read_bytes()) == original
    # A second split never overwrites the first backup.
    split_dataset(a, SplitParams(train_percent=50, val_percent=50, seed=1))
    assert ((a / "train.txt.bak").read_bytes(), (a / "val.txt.bak").read_bytes()) == original
    assert len(read_list(a / "val.txt")) == 15
    assert not list(a.glob(".*.new*")) and not list(a.glob(".*.tmp"))


def test_split_command_splits_then_checks(run_cli: Run, dataset: Path) -> None:
    code, out, _ = run_cli(
        "split",
        str(dataset),
        "-o",
        "split.train_percent=60",
        "-o",
        "split.val_percent=40",
        "-o",
        "dataset.num_workers=1",
    )
    assert code == 0
    assert "Split dataset successfully !" in out and "Check dataset passed !" in out
    assert len(read_list(dataset / "val.txt")) == 6


def test_check_dataset_split_enable_path(run_cli: Run, dataset: Path) -> None:
    code, out, _ = run_cli("check-dataset", str(dataset), "-o", "split.enable=true", "-o", "dataset.num_workers=1")
    assert code == 0 and "Split dataset successfully !" in out
    assert (dataset / "train.txt.bak").exists()


@pytest.mark.parametrize(
    ("train", "val"),
    [("70", "20"), ("0", "100"), ("110", "-10")],
)
def test_percentages_must_add_up(run_cli: Run, dataset: Path, train: str, val: str) -> None:
    before = snapshot(dataset)
    code, _, err = run_cli(
        "split", str(dataset), "-o", f"split.train_percent={train}", "-o", f"split.val_percent={val}"
    )
    assert code == 2
    assert "must both be above 0 and add up to 100" in err
    assert snapshot(dataset) == before


def test_malformed_line_stops_split_before_any_change(dataset: Path) -> None:
    with open(dataset / "val.txt", "a") as f:
        f.write("images/glass/glass_0.jpg zero\n")
    before = snapshot(dataset)
    with pytest.raises(DatasetError, match=r"val.txt:7: expected `relative/path label_index`"):
        split_dataset(dataset, SplitParams())
    assert snapshot(dataset) == before


def test_split_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset folder not found"):
        split_dataset(tmp_path / "nope", SplitParams())


def test_identical_files_land_on_the_same_side() -> None:
    rows = [(f"a/{i}.jpg", 0) for i in range(10)] + [("b/dup.jpg", 1), ("b/x.jpg", 1), ("b/y.jpg", 1)]
    content = {"a/0.jpg": "same", "b/dup.jpg": "same", "a/1.jpg": "twin", "a/2.jpg": "twin"}
    for seed in range(20):
        train, val = stratified_split(rows, 50, 50, seed, content)
        side = {p: "val" for p, _ in val} | {p: "train" for p, _ in train}
        assert side["a/0.jpg"] == side["b/dup.jpg"]
        assert side["a/1.jpg"] == side["a/2.jpg"]
        assert sorted(train + val) == sorted(rows)


def test_split_dataset_keeps_duplicate_files_together(tmp_path: Path) -> None:
    root = cls_dataset(tmp_path / "ds", per_class=10)
    # The same photo filed twice under glass: a plain random split would leak it.
    shutil.copy(root / "images/glass/glass_5.jpg", root / "images/glass/again.jpg")
    with open(root / "train.txt", "a") as f:
        f.write("images/glass/again.jpg 0\n")
    for seed in range(10):
        split_dataset(root, SplitParams(train_percent=50, val_percent=50, seed=seed))
        val = {e.path for e in read_list(root / "val.txt")}
        assert ("images/glass/glass_5.jpg" in val) == ("images/glass/again.jpg" in val)
