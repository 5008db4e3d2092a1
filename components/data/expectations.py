"""The dataset checks: PaddleX's check_dataset for a ClsDataset, run as a Great Expectations suite.

A manifest (one row per listed image, plus one per label.txt line and per list file) is built first,
with every image decoded in a process pool; the checks are GX expectations over those tables. Outputs,
under `dataset.output`, follow PaddleX: `check_dataset_result.json`, `check_dataset/demo_img/`,
`check_dataset/histogram.png`, plus the GX suite, its validation result and Data Docs. `ensure_checked`
is the gate that every step reading a dataset passes first.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.core.config import DatasetParams
from components.core.errors import DatasetError
from components.core.fsutil import atomic_write_json, staged_dir
from components.core.plots import figure, save_png
from components.data.cls_dataset import LABEL_FILE, SPLITS, label_names, list_file, listed_file, read_labels, read_list
from components.data.images import decode_all, draw_lines, load_rgb, probe_image

log = logging.getLogger(__name__)

RESULT_FILE = "check_dataset_result.json"
REPORT_DIR = "check_dataset"
DATA_DOCS = "data_docs"  # under REPORT_DIR
CLASS_NAME_PATTERN = r"^[^\x00-\x1f\x7f:]+$"
INT_PATTERN = r"^[+-]?\d+$"
EXAMPLES = 5


def data_docs_index(params: DatasetParams) -> Path:
    """The Great Expectations Data Docs page that check-dataset writes."""
    return Path(params.output) / REPORT_DIR / DATA_DOCS / "index.html"


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
    "label_conflict",
    "leaves_root",
]


@dataclass
class Manifest:
    root: Path
    files: pd.DataFrame  # one row per list file: list_file, line (0), exists, entries
    labels: pd.DataFrame  # one row per label.txt line, with train/val image counts
    images: pd.DataFrame  # one row per train.txt/val.txt line


@dataclass(frozen=True)
class CheckResult:
    name: str
    table: str
    severity: str
    success: bool
    unexpected_count: int
    examples: list[str]
    fix: str
    found: str = ""  # a failed warning's finding, e.g. "2527 images are not 8-bit RGB (mode L)"


@dataclass
class CheckReport:
    check_pass: bool
    result: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)
    result_path: Path | None = None

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity == "critical"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity != "critical"]


def _track(items: Iterable[Any], total: int, description: str) -> Iterator[Any]:
    from rich.console import Console
    from rich.progress import track

    yield from track(items, total=total, description=description, console=Console(stderr=True), transient=True)


def _file_row(path: Path, entries: int) -> dict[str, Any]:
    return {"list_file": path.name, "line": 0, "exists": path.is_file(), "entries": entries if path.is_file() else None}


def _list_rows(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per list file, and one per line of train.txt and val.txt (`exists` for well-formed lines)."""
    files, rows = [], []
    for split in SPLITS:
        path = root / list_file(split)
        entries = read_list(path) if path.is_file() else []
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
    """`leak_with`: the same content in the other split; `label_conflict`: the same content under another label."""
    first_seen: dict[tuple[str, str], str] = {}
    labels_of: dict[str, dict[int, str]] = {}
    for r in rows:
        if r["hash"]:
            first_seen.setdefault((r["split"], r["hash"]), f"{r['list_file']}:{r['line']}")
        if r["hash"] and r["label"] is not None:
            labels_of.setdefault(r["hash"], {}).setdefault(r["label"], f"{r['list_file']}:{r['line']}")
    for r in rows:
        if r["hash"] and r["label"] is not None:
            other = "val" if r["split"] == "train" else "train"
            r["leak_with"] = first_seen.get((other, r["hash"]))
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


def _expectations(manifest: Manifest, min_image_size: int) -> dict[str, list[Any]]:
    """The suite, one list of expectations per table; `meta.fix` tells the user what to do."""
    import great_expectations.expectations as gxe

    def fix(text: str, found: tuple[str, str] | None = None) -> dict[str, Any]:
        """`found`: what a failed warning found, for one entry and for several ({values}: what was seen)."""
        return {"fix": text, "found": list(found)} if found else {"fix": text}

    files = [
        gxe.ExpectColumnValuesToBeInSet(
            column="exists",
            value_set=[True],
            description="label.txt, train.txt and val.txt exist",
            meta=fix(
                "create the missing file (label.txt: `index name`; train.txt/val.txt: `relative/path index`),"
                " or build the dataset with `sortflow dataset convert SRC DST`"
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="entries",
            min_value=1,
            description="label.txt, train.txt and val.txt are not empty",
            meta=fix("list at least one entry per file; `sortflow split DIR` refills an empty train or val list"),
        ),
    ]
    indices = sorted({int(i) for i in manifest.labels["index"].dropna()})
    labels = [
        gxe.ExpectColumnValuesToBeInSet(
            column="fields",
            value_set=[2],
            description="each line of label.txt is `index name`",
            meta=fix("write the class index, a space, and the class name on each line of label.txt"),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="index_raw",
            regex=INT_PATTERN,
            description="label indices in label.txt are integers",
            meta=fix("start each line of label.txt with its integer class index"),
        ),
        gxe.ExpectColumnMinToBeBetween(
            column="index",
            min_value=0,
            max_value=0,
            description="label indices start at 0",
            meta=fix("number the classes in label.txt from 0"),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="index",
            description="label indices are unique",
            meta=fix("give each class in label.txt its own index"),
        ),
        gxe.ExpectColumnMaxToBeBetween(
            column="index",
            min_value=len(indices) - 1,
            max_value=len(indices) - 1,
            description="label indices are contiguous (0 to N-1)",
            meta=fix("renumber label.txt 0..N-1 without gaps, and the labels in train.txt/val.txt with it"),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="name",
            regex=CLASS_NAME_PATTERN,
            description="class names have no control characters and no ':'",
            meta=fix(
                "rename the class in label.txt: Triton's classification results are score:index:name, and control "
                "characters garble logs, plots and reports"
            ),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="name",
            description="class names are unique",
            meta=fix("merge or rename the classes that share a name in label.txt"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="train_images",
            min_value=1,
            description="every class has at least one train image",
            meta=fix("add train images for the class, remove it from label.txt, or resplit with `sortflow split`"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="val_images",
            min_value=1,
            severity="warning",
            description="every class has at least one val image",
            meta=fix(
                "add val images or resplit with `sortflow split`; its accuracy is not measured",
                ("class has no val image", "classes have no val image"),
            ),
        ),
    ]
    images = [
        gxe.ExpectColumnValuesToBeInSet(
            column="fields",
            value_set=[2],
            description="each list line is `path label` (two fields)",
            meta=fix("write the image path relative to the dataset root, a space, and the class index"),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="label_raw",
            regex=INT_PATTERN,
            description="labels are integers",
            meta=fix("end each line with the integer class index from label.txt"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="leaves_root",
            value_set=[False],
            description="no path leaves the dataset root",
            meta=fix(
                "list images by paths relative to the dataset root, without `..` or a leading `/`, and copy in "
                "the files that symbolic links point to outside the root"
            ),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="exists",
            value_set=[True],
            description="listed images exist",
            meta=fix("restore the file or remove its line; paths are relative to the dataset root"),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="norm_path",
            description="no path is listed twice",
            meta=fix("keep one line per image across train.txt and val.txt"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="readable",
            value_set=[True],
            description="every image decodes fully",
            meta=fix("replace the damaged file (zero bytes, truncated, or not an image) or remove its line"),
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="leak_with",
            description="no image content is in both train and val",
            meta=fix("remove the duplicate from one split (`sortflow split DIR` resplits by path)"),
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="label_conflict",
            severity="warning",
            description="no image content is listed under two labels",
            meta=fix(
                "keep the line with the right label",
                ("picture is also filed under another class", "pictures are also filed under another class"),
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="min_side",
            min_value=min_image_size,
            severity="warning",
            description=f"images are at least {min_image_size} px on the short side (dataset.min_image_size)",
            meta=fix(
                "training upscales them; check that they are the photos you meant",
                (
                    f"image is smaller than {min_image_size} px on the short side ({{values}} px)",
                    f"images are smaller than {min_image_size} px on the short side ({{values}} px)",
                ),
            ),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="mode",
            value_set=["RGB"],
            severity="warning",
            description="images are 8-bit RGB",
            meta=fix(
                "training converts them",
                ("image is not 8-bit RGB (mode {values})", "images are not 8-bit RGB (mode {values})"),
            ),
        ),
    ]
    if indices:
        images.insert(
            2,
            gxe.ExpectColumnValuesToBeInSet(
                column="label",
                value_set=indices,
                description="every label is below num_classes and named in label.txt",
                meta=fix(f"use a class index from label.txt (0..{max(indices)}) or add the class to label.txt"),
            ),
        )
    return {"files": files, "labels": labels, "images": images}


def _examples(result: dict[str, Any], column: str, rows: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    """`file:line path (what is wrong)` for the first offending entries, from the manifest rows."""
    found = result.get("unexpected_index_list") or []
    if not found and "observed_value" in result:
        return [f"observed: {result['observed_value']}"]
    examples = []
    for r in found[:EXAMPLES]:
        if not r["line"]:
            examples.append(r["list_file"])
            continue
        row = rows.get((r["list_file"], int(r["line"])), {})
        example = f"{r['list_file']}:{r['line']} {row.get('text', '')}"
        if column == "readable":
            example += f" ({row.get('error')})"
        elif column not in ("path", "norm_path", "leaves_root"):
            example += f" ({column}: {r.get(column)})"
        examples.append(example)
    return examples


def _found(meta: dict[str, Any], result: dict[str, Any]) -> str:
    """What a failed warning found, e.g. `2527 images are not 8-bit RGB (mode L)`."""
    if "found" not in meta:
        return ""
    count = int(result.get("unexpected_count") or 0)
    seen = Counter(str(v) for v in result.get("unexpected_list") or [])
    values = ", ".join(v for v, _ in seen.most_common(3)) + (", ..." if len(seen) > 3 else "")
    return f"{count} {meta['found'][count != 1].format(values=values)}"


def _check_result(r: dict[str, Any], table: str, rows: dict[tuple[str, int], dict[str, Any]]) -> CheckResult:
    config = r["expectation_config"]
    failed = not r["success"]
    return CheckResult(
        name=config["description"],
        table=table,
        severity=config.get("severity", "critical"),
        success=not failed,
        unexpected_count=int(r["result"].get("unexpected_count") or 0),
        examples=_examples(r["result"], config["kwargs"].get("column", ""), rows) if failed else [],
        fix=config["meta"]["fix"],
        found=_found(config["meta"], r["result"]) if failed else "",
    )


def _example_rows(manifest: Manifest) -> dict[tuple[str, int], dict[str, Any]]:
    """(list file, line) -> the manifest row and its text, for examples that quote the offending line."""
    rows = {(r["list_file"], r["line"]): {**r, "text": r["path"]} for r in manifest.images.to_dict("records")}
    rows.update(
        {
            (r["list_file"], r["line"]): {"text": f"{r['index_raw']} {r['name'] or ''}".strip()}
            for r in manifest.labels.to_dict("records")
        }
    )
    return rows


def run_suite(manifest: Manifest, min_image_size: int, report_dir: Path) -> list[CheckResult]:
    """Validate the manifest with GX; write the suite, the validation result and Data Docs to report_dir."""
    from components.integrations.gx_report import build_docs, gx_context, validate

    context = gx_context(report_dir / DATA_DOCS)
    tables = {"files": manifest.files, "labels": manifest.labels, "images": manifest.images}
    rows = _example_rows(manifest)
    checks: list[CheckResult] = []
    suites, validation_json = [], []
    for table, expectations in _expectations(manifest, min_image_size).items():
        if tables[table].empty:
            continue  # nothing to validate: the files table already reports the missing or empty list
        suite, validations = validate(context, table, tables[table], expectations, ["list_file", "line"])
        suites.append(suite)
        validation_json += validations
        checks += [_check_result(r, table, rows) for v in validations for r in v["results"]]
    build_docs(context)
    atomic_write_json(report_dir / "expectation_suite.json", [s.to_json_dict() for s in suites])
    atomic_write_json(report_dir / "validation_result.json", validation_json)
    return checks


def write_demo_images(
    manifest: Manifest, names: dict[int, str], out_dir: Path, sample_num: int
) -> dict[str, list[str]]:
    """Up to `sample_num` images per split with their class name drawn on; paths relative to the output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = manifest.images
    sampled: dict[str, list[str]] = {}
    used: set[str] = set()
    for split in SPLITS:
        ok = images[(images["split"] == split) & (images["readable"] == True) & images["label"].isin(list(names))]  # noqa: E712
        rows = ok.to_dict("records")
        random.Random(123).shuffle(rows)  # PaddleX samples with seed 123 too
        sampled[split] = []
        for r in rows[:sample_num]:
            name = Path(r["norm_path"]).name
            if Path(name).suffix.lower() not in (".jpg", ".jpeg", ".png"):
                name = f"{Path(name).stem}.png"  # BMP, TIFF, WebP...: shown everywhere as PNG
            if name in used:
                name = f"{split}_{r['line']}_{name}"
            used.add(name)
            draw_lines(load_rgb(str(manifest.root / r["norm_path"])), [names[int(r["label"])]]).save(out_dir / name)
            sampled[split].append(f"{REPORT_DIR}/{out_dir.name}/{name}")
    return sampled


def write_histogram(manifest: Manifest, names: dict[int, str], path: Path) -> None:
    """Train and val image counts per class, sorted by train count, as PaddleX draws it."""
    labels = manifest.labels.dropna(subset=["index"]).sort_values("train_images", ascending=False, kind="stable")
    x = list(range(len(labels)))
    fig = figure(max(8, len(labels) / 5), 5)
    ax = fig.add_subplot()
    ax.bar([i - 0.2 for i in x], labels["train_images"], width=0.4, label="train")
    ax.bar([i + 0.2 for i in x], labels["val_images"], width=0.4, label="val")
    ax.set_xticks(x, [names.get(int(i), str(i)) for i in labels["index"]], rotation=90)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_ylim(top=max(1, int(labels["train_images"].max() if len(labels) else 0)) * 1.15)
    ax.legend(loc="upper right")
    save_png(fig, path, dpi=150)


def _summary(failures: list[CheckResult]) -> str:
    lines = [f"{len(failures)} check(s) failed:"]
    for c in failures:
        lines.append(f"  - {c.name}: {c.unexpected_count or 'see'} offending entries, e.g. {'; '.join(c.examples)}")
        lines.append(f"    fix: {c.fix}")
    return "\n".join(lines)


def check_dataset(params: DatasetParams) -> CheckReport:
    """Run every check on `params.dir` and write the reports under `params.output`.

    The report folder is built aside and swapped in whole; the dataset itself is never modified.
    """
    root = Path(params.dir)
    manifest = build_manifest(root, params.num_workers)
    output = Path(params.output)
    label_file = root / LABEL_FILE
    names = label_names(label_file) if label_file.is_file() else {}
    with staged_dir(output / REPORT_DIR, replace=True) as stage:
        checks = run_suite(manifest, params.min_image_size, stage)
        samples = write_demo_images(manifest, names, stage / "demo_img", params.sample_num)
        analysis = {}
        if names:
            write_histogram(manifest, names, stage / "histogram.png")
            analysis["histogram"] = f"{REPORT_DIR}/histogram.png"
        manifest.images.to_csv(stage / "manifest.csv", index=False)
    failures = [c for c in checks if not c.success and c.severity == "critical"]
    result: dict[str, Any] = {
        "done_flag": True,
        "check_pass": not failures,
        "attributes": {
            "label_file": str(label_file),
            "num_classes": max(names) + 1 if names else 0,
            "train_samples": int((manifest.images["split"] == "train").sum()),
            "train_sample_paths": samples["train"],
            "val_samples": int((manifest.images["split"] == "val").sum()),
            "val_sample_paths": samples["val"],
        },
        "analysis": analysis,
        "dataset_path": str(root),
        "show_type": "image",
        "dataset_type": "ClsDataset",
        "checks": [asdict(c) for c in checks],
    }
    if failures:
        result["err_type"] = "CheckFailedError"
        result["err_msg"] = _summary(failures)
    path = atomic_write_json(output / RESULT_FILE, result)
    report = CheckReport(check_pass=not failures, result=result, checks=checks, result_path=path)
    log.info("Wrote %s (%s)", path, "passed" if report.check_pass else f"{len(failures)} checks failed")
    return report


def format_report(report: CheckReport) -> str:
    """What the CLI prints: PaddleX's success line, or every failed check with file:line examples."""
    lines = []
    for c in report.warnings:
        lines.append(f"warning: {c.found}; {c.fix} (e.g. {'; '.join(c.examples)})")
    if report.check_pass:
        lines.append("Check dataset passed !")
    else:
        lines.append(f"Check dataset failed: {report.result['dataset_path']}")
        lines.append(report.result["err_msg"])
    lines.append(f"Report: {report.result_path}")
    return "\n".join(lines)


def ensure_checked(params: DatasetParams) -> dict[str, Any]:
    """The check result for `params.dir`: reused if newer than its list files, else checked now.

    Raises DatasetError with the failed checks when the dataset does not pass, so nothing trains on it.
    """
    root = Path(params.dir)
    path = Path(params.output) / RESULT_FILE
    lists = [root / LABEL_FILE, *(root / list_file(s) for s in SPLITS)]
    result = None
    if path.is_file() and all(p.is_file() for p in lists):
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("dataset_path") == str(root) and path.stat().st_mtime >= max(p.stat().st_mtime for p in lists):
            result = cached
    if result is None:
        result = check_dataset(params).result
    if not result["check_pass"]:
        raise DatasetError(
            f"{root}: the dataset failed check-dataset, so it is not used; fix it first "
            f"(report: {path}):\n{result['err_msg']}"
        )
    return result
