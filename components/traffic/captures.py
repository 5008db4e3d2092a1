"""Captured traffic read back: the samples of a time window from `publish.capture_dir`, and their image files.

The folder's layout is written by the serving side (`triton_models/capture.py`); a line that cannot be read
is skipped and counted, never fatal, since the writer may have been cut off mid-line.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.core.errors import InputError
from components.triton_models.capture import RECORDS, image_path

log = logging.getLogger(__name__)

KEYS = ("time", "model", "version", "sha", "ext", "decoded")


@dataclass(frozen=True)
class Sample:
    """One captured request."""

    time: float
    model: str
    version: str
    sha: str
    ext: str
    decoded: bool
    top: list[list[float]]  # [[class index, probability], ...], best first; empty when it did not decode
    error: str | None
    path: Path  # the image file (it may have been evicted since)
    shadow_version: str | None = None  # the version of a shadow run that also classified this request
    shadow_top: list[list[float]] = field(default_factory=list)  # its top classes, as `top`
    embedding: str | None = None  # what the model saw, encoded (`novelty.decode`); None without an embedder
    novelty: float | None = None  # its novelty score

    @property
    def label(self) -> int | None:
        return int(self.top[0][0]) if self.top else None

    @property
    def confidence(self) -> float | None:
        return float(self.top[0][1]) if self.top else None

    @property
    def shadow_label(self) -> int | None:
        """The shadow version's class, when a shadow run classified this request."""
        return int(self.shadow_top[0][0]) if self.shadow_top else None


@dataclass
class Window:
    """The samples captured between `start` and `end` (Unix seconds), and the lines that could not be read."""

    start: float
    end: float
    samples: list[Sample] = field(default_factory=list)
    skipped: int = 0
    skipped_example: str | None = None


def _sample(root: Path, line: str) -> Sample:
    record = json.loads(line)
    missing = [k for k in KEYS if k not in record]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    top = [[int(i), float(p)] for i, p in record.get("top", [])]
    if record["decoded"] and not top:
        raise ValueError("a decoded request without probabilities")
    path = image_path(root, str(record["sha"]), str(record["ext"]))
    shadow = record.get("shadow") or {}
    shadow_top = [[int(i), float(p)] for i, p in shadow.get("top", [])]
    return Sample(
        float(record["time"]),
        str(record["model"]),
        str(record["version"]),
        str(record["sha"]),
        str(record["ext"]),
        bool(record["decoded"]),
        top,
        record.get("error"),
        path,
        str(shadow["version"]) if shadow_top else None,
        shadow_top,
        str(record["embedding"]) if "embedding" in record else None,
        float(record["novelty"]) if "novelty" in record else None,
    )


def read_window(capture_dir: str | Path, hours: float, now: float | None = None) -> Window:
    """The samples of the last `hours` before `now`, oldest first; corrupt lines are skipped and counted."""
    root = Path(capture_dir)
    if not (root / RECORDS).is_dir():
        raise InputError(
            f"{root}: no captured traffic (publish.capture_dir); turn capture on with -o publish.capture_rate=0.1 "
            "(for example), then `sortflow publish` and serve again"
        )
    end = time.time() if now is None else now
    window = Window(end - hours * 3600, end)
    first_hour = time.strftime("%Y%m%d-%H", time.gmtime(window.start))
    for path in sorted((root / RECORDS).glob("*.jsonl")):
        if path.stem < first_hour:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            try:
                sample = _sample(root, line)
            except (ValueError, TypeError, KeyError) as exc:  # json's errors are ValueErrors
                window.skipped += 1
                window.skipped_example = window.skipped_example or f"{path}:{number} ({exc})"
                continue
            if window.start <= sample.time <= end:
                window.samples.append(sample)
    window.samples.sort(key=lambda s: s.time)
    if window.skipped:
        log.warning(
            "%d captured records could not be read and were skipped, e.g. %s", window.skipped, window.skipped_example
        )
    return window
