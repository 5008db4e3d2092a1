"""dataset convert: a one-folder-per-class dataset (ImageFolder) into PaddleX's ClsDataset format."""

from __future__ import annotations

import logging
from pathlib import Path

from components.core.config import Params, SplitParams
from components.core.errors import DatasetError
from components.core.fsutil import file_digest, link_or_copy, staged_dir
from components.data.cls_dataset import (
    LABEL_FILE,
    SPLITS,
    class_name_problem,
    inside,
    is_image_file,
    list_file,
    write_labels,
    write_list,
)
from components.data.partition import DatasetWritten, SplitResult, stratified_split

log = logging.getLogger(__name__)


def convert_step(params: Params, src: str | Path, dst: str | Path) -> DatasetWritten:
    """`sortflow dataset convert SRC DST`, with `split` and `dataset.link` from the parameters."""
    split = convert_folders(src, dst, params.split, link=params.dataset.link)
    return DatasetWritten(f"Converted {src} -> {dst}", split)


def convert_folders(src: str | Path, dst: str | Path, split: SplitParams, link: bool = True) -> SplitResult:
    """Write `dst/images/<class>/...`, `label.txt` sorted by class name, and a stratified split.

    The whole dataset is built in a temporary sibling folder and renamed to `dst` at the end.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found; pass a folder with one sub-folder per class")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DatasetError(f"{dst}: already exists and is not empty; choose a new folder or remove it first")
    classes: dict[str, list[Path]] = {}
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.rglob("*") if is_image_file(p))
        outside = [p for p in [folder, *images] if not inside(src, str(p.relative_to(src)))]
        if outside:
            raise DatasetError(
                f"{outside[0]}: a symbolic link to {outside[0].resolve()}, outside {src}; copy the file in instead "
                "(convert reads nothing outside the source folder)"
            )
        if images:
            classes[folder.name] = images
        else:
            log.warning("%s: no images, not a class", folder)
    stray = [p.name for p in src.iterdir() if is_image_file(p)]
    if stray:
        log.warning("%s: %d images outside any class folder are ignored (e.g. %s)", src, len(stray), stray[0])
    hidden = sorted(p.name for p in src.iterdir() if p.is_dir() and p.name.startswith("."))
    if hidden:  # .git, .ipynb_checkpoints and the like are not classes
        log.warning("%s: hidden folders are not classes: %s", src, ", ".join(map(repr, hidden)))
    if not classes:
        skipped = f" (hidden folders are skipped: {', '.join(map(repr, hidden))})" if hidden else ""
        raise DatasetError(f"{src}: no class folders with images{skipped}; expected {src}/<class>/<image>.jpg")
    for name in classes:
        problem = class_name_problem(name)
        if problem:
            raise DatasetError(f"{src}/{name!r}: the class folder's name {problem}; rename the folder")
    rows = []
    content = {}
    with staged_dir(dst, replace=True) as stage:
        for label, (name, images) in enumerate(classes.items()):
            for image in images:
                rel = Path("images", name, image.relative_to(src / name)).as_posix()
                link_or_copy(image, stage / rel, link)
                rows.append((rel, label))
                content[rel] = file_digest(image)
        write_labels(stage / LABEL_FILE, list(classes))
        train, val = stratified_split(rows, split.train_percent, split.val_percent, split.seed, content)
        for name, split_rows in zip(SPLITS, (train, val), strict=True):
            write_list(stage / list_file(name), split_rows)
    log.info("Converted %s -> %s: %d images, %d classes", src, dst, len(rows), len(classes))
    return SplitResult(train=len(train), val=len(val), classes=len(classes))
