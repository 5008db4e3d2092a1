"""The gate that a step reading a dataset passes first: the result that check-dataset wrote for
`dataset.dir`, read and nothing more (the checks themselves live in `expectations` and `report`, so a change
to how they are worded or reported never reruns what is downstream)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.core.config import DatasetParams
from components.core.errors import DatasetError
from components.data.cls_dataset import LABEL_FILE, SPLITS, list_file

RESULT_FILE = "check_dataset_result.json"


class NotChecked(DatasetError):
    """`dataset.dir` has no check result newer than its lists."""


def current_result(params: DatasetParams) -> dict[str, Any] | None:
    """The check result of `params.dir`, or None when there is none or its lists changed since."""
    root = Path(params.dir)
    path = Path(params.output) / RESULT_FILE
    lists = [root / LABEL_FILE, *(root / list_file(s) for s in SPLITS)]
    if not path.is_file() or not all(p.is_file() for p in lists):
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    fresh = path.stat().st_mtime >= max(p.stat().st_mtime for p in lists)
    return result if result.get("dataset_path") == str(root) and fresh else None


def passed_check(params: DatasetParams) -> dict[str, Any]:
    """The check result of `params.dir`, which must exist, be current, and have passed.

    Raises NotChecked when it is missing or older than the lists, DatasetError with the failed checks when
    the dataset did not pass, so nothing trains on it.
    """
    result = current_result(params)
    path = Path(params.output) / RESULT_FILE
    if result is None:
        raise NotChecked(
            f"{params.dir}: no check result newer than its lists in {path}; run `sortflow check-dataset` first"
        )
    if not result["check_pass"]:
        raise DatasetError(
            f"{params.dir}: the dataset failed check-dataset, so it is not used; fix it first "
            f"(report: {path}):\n{result['err_msg']}"
        )
    return result
