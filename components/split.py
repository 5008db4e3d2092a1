"""Reproducible stratified train/val split of a ClsDataset (PaddleX's split, but seeded)."""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.cls_dataset import SPLITS, format_list, list_file, read_list
from components.config import SplitParams
from components.errors import DatasetError
from components.fsutil import atomic_write_text, file_digest

log = logging.getLogger(__name__)

Row = tuple[str, int]


@dataclass(frozen=True)
class SplitResult:
    train: int
    val: int
    classes: int


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


def split_dataset(dataset_dir: str | Path, params: SplitParams) -> SplitResult:
    """Merge train.txt and val.txt, split them again, keep the originals as `.bak` (never overwritten)."""
    root = Path(dataset_dir)
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
            if entry.escapes_root:
                raise DatasetError(f"{where}: path {entry.path!r} leaves the dataset root; list it relative to {root}")
            if entry.norm_path in rows:
                log.warning("%s: %s is listed again; it is kept once", where, entry.path)
                continue
            rows[entry.norm_path] = (entry.path, entry.label)
            if (root / entry.norm_path).is_file():
                content[entry.path] = file_digest(root / entry.norm_path)
    train, val = stratified_split(list(rows.values()), params.train_percent, params.val_percent, params.seed, content)
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
