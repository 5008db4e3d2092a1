"""The dataset checks as a Great Expectations suite: PaddleX's check_dataset for a ClsDataset and the checks
it lacks, over the tables of a manifest, and their results mapped to findings with file:line examples."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.fsutil import atomic_write_json
from components.data.manifest import Manifest

log = logging.getLogger(__name__)

CLASS_NAME_PATTERN = r"^[^\x00-\x1f\x7f:]+$"
INT_PATTERN = r"^[+-]?\d+$"
EXAMPLES = 5
DATA_DOCS = "data_docs"  # under the report folder: the suite's Data Docs site


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
            meta=fix("keep one line per image across train.txt, val.txt and production.txt"),
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
            column="seen_in_training",
            description="no production image is also in train or val",
            meta=fix("remove its line from production.txt: the promotion gate judges on images new to the model"),
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


