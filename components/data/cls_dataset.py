"""PaddleX's ClsDataset format: `label.txt` (`idx name`), `train.txt`/`val.txt` (`relative/path idx`).

Reading never raises on a malformed line: each line becomes an entry that keeps its file and line number,
so that check-dataset can report every problem with `file:line`. Writers are atomic.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.core.errors import DatasetError
from components.core.fsutil import atomic_write_text

LABEL_FILE = "label.txt"
SPLITS = ("train", "val")
PRODUCTION_SPLIT = "production"  # production.txt: reviewed images of the line, never trained on (optional)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
MAX_LINE_BYTES = 4096  # PATH_MAX on Linux: a longer line of a list or label.txt names no file
_INT = re.compile(r"^[+-]?\d+$")
_ESCAPES_ROOT = re.compile(r"(^|/)\.\.(/|$)|^/|^[A-Za-z]:")


def list_file(split: str) -> str:
    return f"{split}.txt"


@dataclass(frozen=True)
class ListEntry:
    """One non-blank line of train.txt or val.txt."""

    list_file: str
    line: int
    path: str | None
    label_raw: str | None
    fields: int

    @property
    def label(self) -> int | None:
        return int(self.label_raw) if self.label_raw is not None and _INT.match(self.label_raw) else None

    @property
    def norm_path(self) -> str | None:
        return posixpath.normpath(self.path) if self.path else None

    @property
    def escapes_root(self) -> bool:
        return bool(self.path) and bool(_ESCAPES_ROOT.search(self.path))

    def leaves(self, root: Path) -> bool:
        """The path leaves `root`: by `..` or an absolute path, or through a symbolic link that points outside."""
        return self.escapes_root or (bool(self.norm_path) and not inside(root, self.norm_path))


def listed_file(root: Path, rel: str) -> bool:
    """Whether `root/rel` is a file; a path the system cannot even look up (a name over 255 bytes) is not."""
    try:
        return (root / rel).is_file()
    except OSError:
        return False


def inside(root: Path, rel: str) -> bool:
    """Whether `root/rel`, with every symbolic link followed, stays inside `root` (a missing file may)."""
    real_root = root.resolve()
    return (root / rel).resolve().is_relative_to(real_root)


@dataclass(frozen=True)
class LabelEntry:
    """One non-blank line of label.txt."""

    line: int
    index_raw: str
    name: str | None

    @property
    def index(self) -> int | None:
        return int(self.index_raw) if _INT.match(self.index_raw) else None


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """The non-blank lines of `path` with their numbers, read a line at a time: a line longer than any path
    can be (a list that is one huge line, a binary file) raises DatasetError instead of filling the memory."""
    number = 0
    with open(path, "rb") as f:
        while raw := f.readline(MAX_LINE_BYTES + 2):
            if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                raise DatasetError(
                    f"{path}:{number + 1}: a line of more than {MAX_LINE_BYTES} bytes (no path is that long; "
                    "is it a list file?); fix or remove that line"
                )
            try:
                text = raw.decode("utf-8").removeprefix("\ufeff" if number == 0 else "")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"{path}:{number + 1}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"
                ) from None
            for line in text.splitlines() or [""]:  # as str.splitlines numbers them: \r and \r\n end a line too
                number += 1
                if line.strip():
                    yield number, line.strip()


def read_list(path: Path) -> list[ListEntry]:
    """Parse a list file. The label is after the last space, so paths may contain spaces; `\\` becomes `/`."""
    entries = []
    for number, line in _lines(path):
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2:
            entries.append(ListEntry(path.name, number, parts[0].replace("\\", "/"), parts[1], 2))
        else:
            entries.append(ListEntry(path.name, number, parts[0].replace("\\", "/"), None, 1))
    return entries


def read_labels(path: Path) -> list[LabelEntry]:
    """Parse label.txt: the index, then the name (which may contain spaces)."""
    entries = []
    for number, line in _lines(path):
        parts = line.split(maxsplit=1)
        entries.append(LabelEntry(number, parts[0], parts[1] if len(parts) == 2 else None))
    return entries


def class_name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name in label.txt (one line per class, the name after the index), or None."""
    if name != name.strip():
        return "starts or ends with white space"
    if len(name.splitlines()) != 1 or name.splitlines()[0] != name:
        return "contains a line break"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cn") for c in name):
        return "contains a control or unassigned character"
    return None


def label_names(path: Path) -> dict[int, str]:
    """Index -> name for the well-formed lines of label.txt."""
    return {e.index: e.name for e in read_labels(path) if e.index is not None and e.name is not None}


def format_list(rows: Iterable[tuple[str, int]]) -> str:
    return "".join(f"{p} {label}\n" for p, label in rows)


def write_list(path: Path, rows: Iterable[tuple[str, int]]) -> None:
    atomic_write_text(path, format_list(rows))


def write_labels(path: Path, names: Sequence[str]) -> None:
    atomic_write_text(path, "".join(f"{i} {name}\n" for i, name in enumerate(names)))


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
