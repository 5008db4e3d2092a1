"""dataset add-reviewed: labelled images from a review (review.csv, or a Label Studio JSON export) into the dataset.

Each labelled image is copied to `dataset.dir/images/<class>/reviewed-<hash>.<ext>` and listed in train.txt
(the split step redistributes it when `split.enable` is set), or, for a seeded share of them
(`review.holdout`, seed `split.seed`), in production.txt: images of the line that training never reads and
that the promotion gate judges on (`register.min_production`). Unknown classes and missing images are errors
that name the file and line; rows without a label and repeated rows are skipped and counted. An image whose
pixels are already in the dataset is not copied again: under the same label it is skipped, under another its
list lines get the reviewed label (the result lists each change). The dataset is checked again, and
`dvc add`ed when DVC tracks it, so `data.dvc` shows the new version. A failed check puts the dataset back
as it was.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.core.config import Params
from components.core.errors import DatasetError
from components.core.fsutil import atomic_write_text, file_digest
from components.core.locks import locked
from components.core.results import StepResult
from components.data.cls_dataset import LABEL_FILE, PRODUCTION_SPLIT, format_list, label_names, list_file
from components.data.images import probe_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reviewed:
    where: str  # file:line (CSV) or file:task number (Label Studio), for messages
    image: Path
    label: str


@dataclass(frozen=True)
class Relabel:
    """A reviewed image already in the dataset under another label: its list line, and the change."""

    where: str  # list file:line
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class AddResult(StepResult):
    added: int
    to_production: int  # of those added, listed in production.txt (review.holdout)
    unlabelled: int
    repeated: int
    already_in_dataset: int
    check_pass: bool
    dvc_file: str | None
    relabelled: tuple[Relabel, ...] = ()  # of those already in the dataset, the ones whose label changed

    def text(self) -> str:
        lines = [
            f"Added {self.added} reviewed images to the dataset ({self.added - self.to_production} to train.txt, "
            f"{self.to_production} to production.txt); skipped {self.already_in_dataset} already in it, "
            f"{self.unlabelled} rows without a label and {self.repeated} repeated rows"
        ]
        if self.relabelled:
            changes = ", ".join(f"{r.where} {r.path}: {r.old} -> {r.new}" for r in self.relabelled[:5])
            more = f" and {len(self.relabelled) - 5} more" if len(self.relabelled) > 5 else ""
            lines.append(f"Relabelled {len(self.relabelled)} images already in the dataset: {changes}{more}")
        if self.dvc_file:
            lines.append(
                f"New data version in {self.dvc_file}: commit it with git (git add {self.dvc_file}), then `dvc push`"
            )
        return "\n".join(lines)


def _text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark allowed); any other encoding names the line it fails on."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from None


def _image(where: str, folder: Path, file: object) -> Path:
    if not isinstance(file, str) or not file.strip() or "\x00" in file:
        raise DatasetError(f"{where}: no usable image file name ({file!r}); use the file that `sortflow review` wrote")
    return folder / file


def _csv_rows(path: Path) -> list[Reviewed | None]:
    reader = csv.DictReader(io.StringIO(_text(path), newline=""))
    try:
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(
                f"{path}:1: no {', '.join(sorted(missing))} column; use the review.csv that `sortflow review` wrote"
            )
        rows: list[Reviewed | None] = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            label = (row.get("label") or "").strip()
            rows.append(Reviewed(where, _image(where, path.parent, row.get("file")), label) if label else None)
    except csv.Error as exc:
        raise DatasetError(f"{path}:{reader.line_num}: not a CSV row ({exc}); fix that line") from None
    return rows


def _task_row(path: Path, n: int, task: object) -> Reviewed | None:
    """One Label Studio task: its latest annotation that was not cancelled, or None when it has none."""
    where = f"{path}: task {n}"
    if not isinstance(task, dict):
        raise DatasetError(f"{where} is {type(task).__name__}, not a task; export the project as JSON")
    data = task.get("data")
    file = data.get("sortflow_file") if isinstance(data, dict) else None
    if file is None:
        raise DatasetError(f"{where} has no data.sortflow_file; import the tasks that `sortflow review` wrote")
    image = _image(where, path.parent, file)
    annotations = task.get("annotations") or []
    done = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")] if isinstance(
        annotations, list
    ) else []
    results = done[-1].get("result") if done else None
    values = [r.get("value") for r in results if isinstance(r, dict)] if isinstance(results, list) else []
    choices = [v["choices"] for v in values if isinstance(v, dict) and v.get("choices")]
    if not choices:
        return None
    if not isinstance(choices[0], list) or not isinstance(choices[0][0], str):
        raise DatasetError(f"{where}: its choice {choices[0]!r} is not a class name; label it with the class choices")
    return Reviewed(where, image, choices[0][0].strip()) if choices[0][0].strip() else None


def _label_studio_rows(path: Path) -> list[Reviewed | None]:
    """The latest annotation of each task that was not cancelled (a task without one counts as unlabelled)."""
    try:
        tasks = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); export the project as JSON") from exc
    if not isinstance(tasks, list):
        raise DatasetError(f"{path}: expected a list of tasks (Label Studio's JSON export)")
    return [_task_row(path, n, task) for n, task in enumerate(tasks, start=1)]


def read_reviewed(path: str | Path) -> tuple[list[Reviewed], int, int]:
    """The labelled rows (each image once), how many rows had no label, and how many repeated an earlier row."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: review file not found; pass the review.csv or the Label Studio JSON export")
    rows = _label_studio_rows(path) if path.suffix.lower() == ".json" else _csv_rows(path)
    labelled, seen, repeated = [], {}, 0
    for row in rows:
        if row is None:
            continue
        earlier = seen.get(row.image.resolve())
        if earlier is not None and earlier.label != row.label:
            raise DatasetError(
                f"{row.where}: {row.image.name} was labelled {earlier.label!r} at {earlier.where}; keep one label"
            )
        if earlier is not None:
            repeated += 1
            continue
        seen[row.image.resolve()] = row
        labelled.append(row)
    return labelled, sum(r is None for r in rows), repeated


def _validate(rows: list[Reviewed], classes: dict[str, int], label_file: Path) -> dict[Path, str]:
    """Every row names a known class and a readable image; each image's pixel hash (decoded once, here)."""
    pixels = {}
    for row in rows:
        if row.label not in classes:
            raise DatasetError(
                f"{row.where}: unknown class {row.label!r}; valid classes ({label_file}): {', '.join(classes)}"
            )
        if not row.image.is_file():
            raise DatasetError(
                f"{row.where}: image {row.image} not found; keep the review folder as `sortflow review` wrote it"
            )
        probe = probe_image(str(row.image))
        if not probe["readable"]:
            raise DatasetError(f"{row.where}: {row.image} is not a readable image; remove its row")
        pixels[row.image] = probe["hash"]
    return pixels


def _copy_new(
    rows: list[Reviewed],
    pixels: dict[Path, str],
    root: Path,
    classes: dict[str, int],
    known: set[str],
    written: list[Path],
) -> list[tuple[str, int]]:
    """Copy the images whose pixels are not in the dataset yet; their list rows. Each file is added to `written`
    as it is copied, so a copy cut short is cleaned up too."""
    lines: list[tuple[str, int]] = []
    for row in rows:
        if pixels[row.image] in known:
            continue
        known.add(pixels[row.image])
        folder = row.label.replace("/", "_")
        rel = f"images/{folder}/reviewed-{file_digest(row.image)[:16]}{row.image.suffix.lower()}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        written.append(root / rel)
        shutil.copyfile(row.image, root / rel)
        lines.append((rel, classes[row.label]))
    return lines


def _relabels(
    rows: list[Reviewed], pixels: dict[Path, str], listed: dict[str, list[tuple[str, int, str, int]]], names: list[str]
) -> list[Relabel]:
    """The list lines of reviewed images already in the dataset (by pixels) under another label."""
    return [
        Relabel(f"{list_name}:{line}", path, names[label], row.label)
        for row in rows
        for list_name, line, path, label in listed.get(pixels[row.image], [])
        if names[label] != row.label
    ]


def _apply_relabels(root: Path, relabels: list[Relabel], classes: dict[str, int]) -> None:
    """Rewrite each relabelled line of its list file with the new label (the same image, no copy)."""
    for list_name in sorted({r.where.rsplit(":", 1)[0] for r in relabels}):
        path = root / list_name
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        for r in relabels:
            name, line = r.where.rsplit(":", 1)
            if name == list_name:
                ending = "\n" if lines[int(line) - 1].endswith("\n") else ""
                lines[int(line) - 1] = f"{r.path} {classes[r.new]}{ending}"
        atomic_write_text(path, "".join(lines))


def held_out(count: int, share: float, seed: int) -> list[int]:
    """Which of `count` new images go to production.txt: round(share x count) of them, chosen with `seed`."""
    import random

    return sorted(random.Random(seed).sample(range(count), round(share * count)))


def _extend_lists(lists: dict[str, Path], lines: list[tuple[str, int]], held: set[int]) -> None:
    """The new lines at the end of train.txt, those held out at the end of production.txt."""
    chosen: dict[str, list[tuple[str, int]]] = {"train": [], PRODUCTION_SPLIT: []}  # val gets no new image
    for i, line in enumerate(lines):
        chosen[PRODUCTION_SPLIT if i in held else "train"].append(line)
    for split, added in chosen.items():
        text = lists[split].read_text(encoding="utf-8") if lists[split].is_file() else ""
        if added:
            text = text if text.endswith("\n") or not text else text + "\n"
            atomic_write_text(lists[split], text + format_list(added))


def _restore(lists: dict[str, Path], before: dict[str, str | None], written: list[Path]) -> None:
    """Put the lists back as they were and remove the copied images."""
    for split, path in lists.items():
        if before[split] is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_text(path, before[split])
    for path in written:
        path.unlink(missing_ok=True)


@locked("dataset.dir")
def add_reviewed(params: Params, review_file: str | Path) -> AddResult:
    """Add the labelled images of `review_file` to `dataset.dir`, check it, and `dvc add` it when tracked.

    Reads the review file, the images it names and the dataset. Writes the new images, train.txt and
    production.txt (`review.holdout` of them), the check-dataset reports, and `<dataset>.dvc`. Raises
    DatasetError for an unknown class, a missing image, conflicting labels, or a dataset that no longer
    passes its check (then nothing is left changed).
    """
    from components.data.manifest import build_manifest
    from components.data.report import run_check
    from components.integrations.dvc_data import add as dvc_add

    root = Path(params.dataset.dir)
    if not (root / LABEL_FILE).is_file():
        raise DatasetError(f"{root / LABEL_FILE}: not found; dataset.dir must be a ClsDataset to add images to")
    classes = {name: index for index, name in sorted(label_names(root / LABEL_FILE).items())}
    rows, unlabelled, repeated = read_reviewed(review_file)
    pixels = _validate(rows, classes, root / LABEL_FILE)
    images = build_manifest(root, params.dataset.num_workers).images.dropna(subset=["hash", "label"])
    listed: dict[str, list[tuple[str, int, str, int]]] = {}
    for r in images.itertuples():
        listed.setdefault(r.hash, []).append((r.list_file, int(r.line), r.path, int(r.label)))
    known = set(listed)
    relabels = _relabels(rows, pixels, listed, list(classes))
    lists = {split: root / list_file(split) for split in ("train", "val", PRODUCTION_SPLIT)}
    before = {split: path.read_text(encoding="utf-8") if path.is_file() else None for split, path in lists.items()}
    written: list[Path] = []
    try:
        _apply_relabels(root, relabels, classes)
        lines = _copy_new(rows, pixels, root, classes, known, written)
        held = held_out(len(lines), params.review.holdout, params.split.seed)
        _extend_lists(lists, lines, set(held))
        report = run_check(params.dataset)
        if not report.check_pass:
            raise DatasetError(
                f"{root} fails check-dataset with the reviewed images; it was put back:\n{report.result['err_msg']}"
            )
    except BaseException:
        _restore(lists, before, written)
        raise
    dvc_file = dvc_add(root) if lines or relabels else None
    log.info(
        "Added %d reviewed images to %s (%d already there, %d unlabelled, %d repeated rows)",
        len(lines),
        root,
        len(rows) - len(lines),
        unlabelled,
        repeated,
    )
    return AddResult(
        len(lines),
        len(held),
        unlabelled,
        repeated,
        len(rows) - len(lines),
        report.check_pass,
        str(dvc_file) if dvc_file else None,
        tuple(relabels),
    )
