"""Content hashes of a ClsDataset's lists and images: what a split, a training run or a val set was made of.

One place for each, so that a split record, an MLflow lineage tag and a registry tag that describe the
same data always agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from components.core.fsutil import file_digest
from components.data.cls_dataset import LABEL_FILE, SPLITS, list_file, read_list


def lists_digest(dataset_dir: str | Path) -> str:
    """label.txt, train.txt and val.txt (their bytes; `-` for a missing file): which images, which labels."""
    root = Path(dataset_dir)
    return ":".join(
        file_digest(p) if p.is_file() else "-" for p in [root / LABEL_FILE, *(root / list_file(s) for s in SPLITS)]
    )


def _rows_digest(rows: Iterable[tuple[str, int, str]], prefix: bytes = b"") -> str:
    digest = hashlib.blake2b(prefix, digest_size=16)
    for path, label, content in rows:
        digest.update(f"{path}\t{label}\t{content}\n".encode())
    return digest.hexdigest()


def images_digest(rows: Iterable[tuple[str, int]], content: dict[str, str]) -> str:
    """Listed images (path, label and the file hash in `content`), in path order: changes with any image."""
    return _rows_digest((path, label, content[path]) for path, label in sorted(rows))


def val_set_digest(dataset_dir: str | Path) -> str:
    """label.txt and the val images with their labels and contents: two models scored on sets with the same
    digest have comparable scores."""
    root = Path(dataset_dir)
    rows = ((e.norm_path, e.label, file_digest(root / e.norm_path)) for e in read_list(root / list_file("val")))
    return _rows_digest(rows, prefix=(root / LABEL_FILE).read_bytes())
