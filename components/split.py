"""Reproducible stratified train/val split of a ClsDataset (PaddleX's split, but seeded)."""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from components.cls_dataset import SPLITS, format_list, list_file, read_list
from components.config import SplitParams
from components.errors import DatasetError
from components.fsutil import atomic_write_text

log = logging.getLogger(__name__)

Row = tuple[str, int]


@dataclass(frozen=True)
class SplitResult:
    train: int
    val: int
    classes: int


def stratified_split(
    rows: Sequence[Row], train_percent: int, val_percent: int, seed: int
) -> tuple[list[Row], list[Row]]:
    """Split rows per class with a seeded shuffle; the output depends only on the set of rows and the seed.

    Each class with two or more images keeps at least one in each split. Both lists are sorted by
    (label, path) so that the files diff cleanly under version control.
    """
    if train_percent <= 0 or val_percent <= 0 or train_percent + val_percent != 100:
        raise DatasetError(
            f"split.train_percent ({train_percent}) and split.val_percent ({val_percent}) must both be above 0"
            " and add up to 100"
        )
    by_class: dict[int, list[str]] = defaultdict(list)
    for path, label in sorted(set(rows)):
        by_class[label].append(path)
    rng = random.Random(seed)
    train: list[Row] = []
    val: list[Row] = []
    for label in sorted(by_class):
        paths = by_class[label]
        rng.shuffle(paths)
        n = len(paths)
        # Half-up rounding: Python's round() is banker's rounding, which surprises people reading the counts.
        n_val = int(n * val_percent / 100 + 0.5)
        n_val = min(max(n_val, 1), n - 1) if n >= 2 else 0
        val.extend((p, label) for p in paths[:n_val])
        train.extend((p, label) for p in paths[n_val:])
    return sorted(train, key=lambda r: (r[1], r[0])), sorted(val, key=lambda r: (r[1], r[0]))


def split_dataset(dataset_dir: str | Path, params: SplitParams) -> SplitResult:
    """Merge train.txt and val.txt, split them again, keep the originals as `.bak` (never overwritten)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass the folder that holds label.txt")
    present = [root / list_file(s) for s in SPLITS if (root / list_file(s)).is_file()]
    if not present:
        raise DatasetError(f"{root}: neither train.txt nor val.txt exists; nothing to split")
    rows: dict[str, Row] = {}
    for path in present:
        for entry in read_list(path):
            where = f"{path}:{entry.line}"
            if entry.fields != 2 or entry.label is None:
                raise DatasetError(f"{where}: expected `relative/path label_index`; fix this line, then split again")
            if entry.escapes_root:
                raise DatasetError(f"{where}: path {entry.path!r} leaves the dataset root; list it relative to {root}")
            if entry.norm_path in rows:
                log.warning("%s: %s is listed again; it is kept once", where, entry.path)
                continue
            rows[entry.norm_path] = (entry.path, entry.label)
    train, val = stratified_split(list(rows.values()), params.train_percent, params.val_percent, params.seed)
    # New lists go to temporary files first, so a failure leaves the dataset as it was.
    staged = {}
    for split, split_rows in zip(SPLITS, (train, val), strict=True):
        staged[split] = atomic_write_text(root / f".{list_file(split)}.new", format_list(split_rows))
    for split in SPLITS:
        current, backup = root / list_file(split), root / f"{list_file(split)}.bak"
        if current.exists() and not backup.exists():
            os.rename(current, backup)
        os.replace(staged[split], current)
    result = SplitResult(train=len(train), val=len(val), classes=len({label for _, label in rows.values()}))
    log.info(
        "Split %s: %d train, %d val over %d classes (%d/%d, seed %d)",
        root,
        result.train,
        result.val,
        result.classes,
        params.train_percent,
        params.val_percent,
        params.seed,
    )
    return result
