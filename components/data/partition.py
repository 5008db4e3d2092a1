"""Reproducible stratified train/val splits of a ClsDataset (PaddleX's split, but seeded), and the split
dataset that train, evaluate, export and register read (`prepared_dataset`).

Used by the split and check-dataset steps, by `dataset convert` and by the demo dataset.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.core.config import Params, SplitParams
from components.core.errors import DatasetError
from components.core.fsutil import atomic_write_json, atomic_write_text, file_digest, link_or_copy, staged_dir
from components.core.results import StepResult
from components.data.cls_dataset import LABEL_FILE, SPLITS, format_list, list_file, listed_file, read_list, write_list
from components.data.digests import images_digest, lists_digest

log = logging.getLogger(__name__)

Row = tuple[str, int]


@dataclass(frozen=True)
class SplitResult:
    train: int
    val: int
    classes: int

    def counts(self) -> str:
        return f"{self.classes} classes, {self.train} train, {self.val} val"


@dataclass(frozen=True)
class DatasetWritten(StepResult):
    """A dataset that a step wrote whole (dataset convert, dataset demo)."""

    what: str  # "Converted SRC -> DST", "Demo dataset in DST"
    split: SplitResult

    def text(self) -> str:
        return f"{self.what}: {self.split.counts()}"


def stratified_split(
    rows: Sequence[Row], train_percent: int, val_percent: int, seed: int, content: Mapping[str, str] | None = None
) -> tuple[list[Row], list[Row]]:
    """Split rows per class with a seeded shuffle; the output depends only on the set of rows and the seed.

    Rows whose files have the same `content` key (path -> file hash) form one group and land on the same
    side, so duplicate files never leak between train and val; a group counts for its lowest label.
    Each class with two or more groups keeps at least one in each split. Both lists are sorted by
    (label, path) so that the files diff cleanly under version control.
    """
    if train_percent <= 0 or val_percent <= 0 or train_percent + val_percent != 100:
        raise DatasetError(
            f"split.train_percent ({train_percent}) and split.val_percent ({val_percent}) must both be above 0"
            " and add up to 100"
        )
    content = content or {}
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(set(rows)):
        groups[content.get(row[0], row[0])].append(row)
    by_class: dict[int, list[list[Row]]] = defaultdict(list)
    for members in sorted(groups.values()):
        by_class[min(label for _, label in members)].append(members)
    rng = random.Random(seed)
    train: list[Row] = []
    val: list[Row] = []
    for label in sorted(by_class):
        class_groups = by_class[label]
        rng.shuffle(class_groups)
        n = sum(len(g) for g in class_groups)
        # Half-up rounding: Python's round() is banker's rounding, which surprises people reading the counts.
        n_val = int(n * val_percent / 100 + 0.5)
        n_val = min(max(n_val, 1), n - 1) if n >= 2 else 0
        taken = 0
        for i, members in enumerate(class_groups):
            if taken < n_val and i < len(class_groups) - 1:
                val.extend(members)
                taken += len(members)
            else:
                train.extend(members)
    return sorted(train, key=lambda r: (r[1], r[0])), sorted(val, key=lambda r: (r[1], r[0]))


SPLIT_RESULT = "split_result.json"


def _read_rows(root: Path) -> tuple[list[Row], dict[str, str]]:
    """The rows of train.txt and val.txt (each path once) and their file hashes; bad lines raise."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass the folder that holds label.txt")
    present = [root / list_file(s) for s in SPLITS if (root / list_file(s)).is_file()]
    if not present:
        raise DatasetError(f"{root}: neither train.txt nor val.txt exists; nothing to split")
    rows: dict[str, Row] = {}
    content: dict[str, str] = {}
    for path in present:
        for entry in read_list(path):
            where = f"{path}:{entry.line}"
            if entry.fields != 2 or entry.label is None:
                raise DatasetError(f"{where}: expected `relative/path label_index`; fix this line, then split again")
            if entry.leaves(root):
                raise DatasetError(
                    f"{where}: path {entry.path!r} leaves the dataset root (by `..`, an absolute path or a symbolic "
                    f"link); list it relative to {root}, and copy in a file that a link points to outside it"
                )
            if entry.norm_path in rows:
                log.warning("%s: %s is listed again; it is kept once", where, entry.path)
                continue
            rows[entry.norm_path] = (entry.path, entry.label)
            if listed_file(root, entry.norm_path):
                content[entry.path] = file_digest(root / entry.norm_path)
    return list(rows.values()), content


def _result(train: list[Row], val: list[Row]) -> SplitResult:
    return SplitResult(train=len(train), val=len(val), classes=len({label for _, label in train + val}))


def _log(result: SplitResult, src: Path, dst: Path, params: SplitParams, resplit: bool) -> None:
    how = f"{params.train_percent}/{params.val_percent}, seed {params.seed}" if resplit else "lists kept"
    log.info(
        "Split %s -> %s: %d train, %d val over %d classes (%s)", src, dst, result.train, result.val, result.classes, how
    )


def split_dataset(dataset_dir: str | Path, params: SplitParams) -> SplitResult:
    """Merge train.txt and val.txt, split them again, keep the originals as `.bak` (never overwritten)."""
    root = Path(dataset_dir)
    rows, content = _read_rows(root)
    train, val = stratified_split(rows, params.train_percent, params.val_percent, params.seed, content)
    # New lists go to temporary files first, so a failure leaves the dataset as it was.
    staged = {}
    for split, split_rows in zip(SPLITS, (train, val), strict=True):
        staged[split] = atomic_write_text(root / f".{list_file(split)}.new", format_list(split_rows))
    for split in SPLITS:
        current, backup = root / list_file(split), root / f"{list_file(split)}.bak"
        if current.exists() and not backup.exists():
            os.rename(current, backup)
        os.replace(staged[split], current)
    result = _result(train, val)
    _log(result, root, root, params, resplit=True)
    return result


def split_into(dataset_dir: str | Path, output: str | Path, params: SplitParams, link: bool = True) -> SplitResult:
    """Write the split dataset `output`: label.txt, train.txt, val.txt and the listed images (hard-linked).

    With `params.enable` the lists are split again (seeded, stratified); without, the dataset's own
    lists are kept. The source stays untouched, so a DVC-tracked dataset is never rewritten; the same
    source and parameters give byte-identical lists and `split_result.json`.
    """
    root, out = Path(dataset_dir), Path(output)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise DatasetError(f"split.output={output} lies inside dataset.dir={dataset_dir}; choose a folder outside it")
    if not (root / LABEL_FILE).is_file():
        raise DatasetError(f"{root / LABEL_FILE}: not found; a ClsDataset needs label.txt (`idx name` per line)")
    rows, content = _read_rows(root)
    if params.enable:
        train, val = stratified_split(rows, params.train_percent, params.val_percent, params.seed, content)
    else:
        train, val = (
            [(e.path, e.label) for e in read_list(root / list_file(s))] if (root / list_file(s)).is_file() else []
            for s in SPLITS
        )
    missing = [path for path, _ in train + val if not (root / path).is_file()]
    if missing:
        raise DatasetError(
            f"{root}: {len(missing)} listed images do not exist (e.g. {missing[0]}); run check-dataset for the lines"
        )
    for path, _ in train + val:  # a path listed twice in another spelling was hashed once, under the first
        content.setdefault(path, file_digest(root / path))
    result = _result(train, val)
    with staged_dir(out, replace=True) as stage:
        for path, _ in train + val:
            link_or_copy(root / path, stage / path, link)
        shutil.copyfile(root / LABEL_FILE, stage / LABEL_FILE)
        for split, split_rows in zip(SPLITS, (train, val), strict=True):
            write_list(stage / list_file(split), split_rows)
        atomic_write_json(
            stage / SPLIT_RESULT,
            {
                "dataset_path": str(dataset_dir),
                "source_digest": lists_digest(root),
                # Changes with any listed image, so a DVC stage may depend on this file instead of every image.
                "images_digest": images_digest(train + val, content),
                "resplit": params.enable,
                **({k: getattr(params, k) for k in ("train_percent", "val_percent", "seed")} if params.enable else {}),
                **dataclasses.asdict(result),
            },
        )
    _log(result, root, out, params, resplit=params.enable)
    return result


def prepared_dataset(params: Params, check: bool = True) -> Path:
    """The dataset that train, evaluate and export read: `split.output` when set, else `dataset.dir`.

    With `check`, `dataset.dir` must pass check-dataset first. A split dataset must come from the current
    lists of `dataset.dir`, so a stale split is never trained on.
    """
    if check:
        from components.data.gate import passed_check

        passed_check(params.dataset)
    if not params.split.output:
        return Path(params.dataset.dir)
    out = Path(params.split.output)
    record = out / SPLIT_RESULT
    if not record.is_file():
        raise DatasetError(
            f"{out}: no split dataset (split.output); run `sortflow split` first, or set split.output to empty "
            "to train on dataset.dir as it is"
        )
    made = json.loads(record.read_text(encoding="utf-8"))
    source = Path(params.dataset.dir)
    if Path(made["dataset_path"]).resolve() != source.resolve() or made["source_digest"] != lists_digest(source):
        raise DatasetError(
            f"{out} was split from {made['dataset_path']} as it was before; {source} has changed since "
            "(or is another dataset): run `sortflow split` again"
        )
    return out
