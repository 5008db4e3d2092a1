"""The manifest that the dataset checks run over: one row per listed image (decoded in a process pool), one
per label.txt line and one per list file."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.core.errors import DatasetError
from components.data.cls_dataset import (
    LABEL_FILE,
    PRODUCTION_SPLIT,
    SPLITS,
    list_file,
    listed_file,
    read_labels,
    read_list,
)
from components.data.images import decode_all, probe_image

log = logging.getLogger(__name__)

IMAGE_COLUMNS = [
    "list_file",
    "line",
    "split",
    "path",
    "norm_path",
    "label_raw",
    "label",
    "fields",
    "exists",
    "readable",
    "error",
    "width",
    "height",
    "min_side",
    "mode",
    "format",
    "hash",
    "leak_with",
    "seen_in_training",
    "label_conflict",
    "leaves_root",
]


@dataclass
class Manifest:
    root: Path
    files: pd.DataFrame  # one row per list file: list_file, line (0), exists, entries
    labels: pd.DataFrame  # one row per label.txt line, with train/val image counts
    images: pd.DataFrame  # one row per train.txt/val.txt/production.txt line


def _track(items: Iterable[Any], total: int, description: str) -> Iterator[Any]:
    from rich.console import Console
    from rich.progress import track

    yield from track(items, total=total, description=description, console=Console(stderr=True), transient=True)


def _file_row(path: Path, entries: int) -> dict[str, Any]:
    return {"list_file": path.name, "line": 0, "exists": path.is_file(), "entries": entries if path.is_file() else None}


def _list_rows(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per list file, and one per line of train.txt, val.txt and production.txt where there is one
    (`exists` for well-formed lines). production.txt is optional: it has no row among the files."""
    files, rows = [], []
    optional = [PRODUCTION_SPLIT] if (root / list_file(PRODUCTION_SPLIT)).is_file() else []
    for split in [*SPLITS, *optional]:
        path = root / list_file(split)
        entries = read_list(path) if path.is_file() else []
        if split in SPLITS:
            files.append(_file_row(path, len(entries)))
        for e in entries:
            row = dict.fromkeys(IMAGE_COLUMNS)
            row.update(
                list_file=e.list_file,
                line=e.line,
                split=split,
                path=e.path,
                norm_path=e.norm_path,
                label_raw=e.label_raw,
                label=e.label,
                fields=e.fields,
            )
            # Only well-formed lines that stay inside the root are opened: a malformed line is reported
            # once, for its form, and a path outside the root (by its text or by a symbolic link) is never read.
            row["leaves_root"] = e.fields == 2 and e.leaves(root)
            if e.fields == 2 and not row["leaves_root"]:
                row["exists"] = listed_file(root, e.norm_path)
            rows.append(row)
    return files, rows


def _probe_rows(root: Path, rows: list[dict[str, Any]], workers: int) -> None:
    """Decode every existing listed image (in a process pool) and add what was found to its row."""
    to_probe = [(i, str(root / r["norm_path"])) for i, r in enumerate(rows) if r["exists"]]
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    probed = decode_all(probe_image, [p for _, p in to_probe], workers)
    for (i, _), info in zip(to_probe, _track(probed, len(to_probe), "Decoding images"), strict=True):
        rows[i].update(info)
        if info["readable"]:
            rows[i]["min_side"] = min(info["width"], info["height"])
    log.info("Decoded %d images in %.1f s with %d workers", len(to_probe), time.perf_counter() - start, workers)


def _mark_duplicates(rows: list[dict[str, Any]]) -> None:
    """`leak_with`: the same content in the other split; `seen_in_training`: a production.txt image whose
    content is in train or val; `label_conflict`: the same content under another label."""
    first_seen: dict[tuple[str, str], str] = {}
    labels_of: dict[str, dict[int, str]] = {}
    for r in rows:
        if r["hash"]:
            first_seen.setdefault((r["split"], r["hash"]), f"{r['list_file']}:{r['line']}")
        if r["hash"] and r["label"] is not None:
            labels_of.setdefault(r["hash"], {}).setdefault(r["label"], f"{r['list_file']}:{r['line']}")
    for r in rows:
        if r["hash"] and r["label"] is not None:
            if r["split"] == PRODUCTION_SPLIT:
                found = (first_seen.get((o, r["hash"])) for o in SPLITS)
                r["seen_in_training"] = next((where for where in found if where), None)
            else:
                r["leak_with"] = first_seen.get(("val" if r["split"] == "train" else "train", r["hash"]))
            others = [where for label, where in labels_of.get(r["hash"], {}).items() if label != r["label"]]
            r["label_conflict"] = others[0] if others else None


def _label_table(labels: list[Any], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per label.txt line, with its train and val image counts."""
    counts = Counter((r["split"], r["label"]) for r in rows if r["label"] is not None)
    label_rows = [
        {
            "list_file": LABEL_FILE,
            "line": e.line,
            "index_raw": e.index_raw,
            "index": e.index,
            "name": e.name,
            "fields": 2 if e.name is not None else 1,
            "train_images": counts[("train", e.index)],
            "val_images": counts[("val", e.index)],
        }
        for e in labels
    ]
    table = pd.DataFrame(
        label_rows, columns=["list_file", "line", "index_raw", "index", "name", "fields", "train_images", "val_images"]
    )
    table["index"] = table["index"].astype("Int64")
    return table


def build_manifest(dataset_dir: str | Path, workers: int = 0) -> Manifest:
    """Read the lists and decode every listed image that exists inside the dataset root."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass the folder that holds label.txt")
    label_path = root / LABEL_FILE
    labels = read_labels(label_path) if label_path.is_file() else []
    files, rows = _list_rows(root)
    _probe_rows(root, rows, workers)
    _mark_duplicates(rows)
    images = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    for col in ("label", "width", "height", "min_side", "line", "fields"):
        images[col] = images[col].astype("Int64")
    files = [_file_row(label_path, len(labels)), *files]
    return Manifest(root=root, files=pd.DataFrame(files), labels=_label_table(labels, rows), images=images)


