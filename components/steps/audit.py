"""dataset audit: near-duplicate images (re-encoded, resized, shot twice) across splits and labels, and likely label
errors, with a contact sheet of both.

Near-duplicates come from 64-bit perceptual hashes (`audit.max_hamming` bits apart at most) of every image in
train.txt, val.txt and production.txt; a pair across splits is a leak that inflates val accuracy, a pair
with two labels is a likely label error. Label errors come from out-of-fold probabilities of the trained
checkpoint's features (`model/label_issues.py`, cleanlab). Writes `audit.output` whole: near_duplicates.csv,
label_issues.csv, review.csv (the label issues with an empty `label` column: fill it in and run `sortflow
dataset add-reviewed` on it to correct them), index.html, the GX validation of the leak expectation and
audit_result.json.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.core.config import Params
from components.core.fsutil import atomic_write_json, atomic_write_text, staged_dir
from components.core.locks import locked
from components.core.results import StepResult
from components.data.audit import Listed, NearDuplicate, near_duplicates, perceptual_hash
from components.data.cls_dataset import PRODUCTION_SPLIT, SPLITS, label_names, list_file, read_list
from components.model.label_issues import LabelIssue

log = logging.getLogger(__name__)

RESULT_FILE, PAIRS_FILE, ISSUES_FILE, SHEET_FILE, REVIEW_FILE = (
    "audit_result.json",
    "near_duplicates.csv",
    "label_issues.csv",
    "index.html",
    "review.csv",
)
SHEET_ROWS, THUMB = 100, 120


@dataclass(frozen=True)
class AuditResult(StepResult):
    images: int
    near_duplicates: int
    leaks: int  # near-duplicate pairs across splits
    label_conflicts: int  # near-duplicate pairs with different labels
    label_issues: int | None  # None: no trained checkpoint to find them with
    fail_on_leak: bool
    report: str

    def text(self) -> str:
        issues = (
            "not looked for (no trained checkpoint: run `sortflow train`)"
            if self.label_issues is None
            else str(self.label_issues)
        )
        leak = f"{self.leaks} across splits" + (" (audit.fail_on_leak: FAILED)" if self.exit_code else "")
        return (
            f"Audited {self.images} images: {self.near_duplicates} near-duplicate pairs ({leak}, "
            f"{self.label_conflicts} with two labels); likely label errors: {issues}\nReport: {self.report}"
        )

    @property
    def exit_code(self) -> int:
        return 1 if self.fail_on_leak and self.leaks else 0


def _listed(root: Path, source: Path) -> list[Listed]:
    """train.txt and val.txt of the dataset trained on, and production.txt of the source dataset if it has one."""
    lists = [(root, split) for split in SPLITS]
    if (source / list_file(PRODUCTION_SPLIT)).is_file():
        lists.append((source, PRODUCTION_SPLIT))
    out = []
    for folder, split in lists:
        for e in read_list(folder / list_file(split)):
            out.append(Listed(split, f"{e.list_file}:{e.line}", e.norm_path, str(folder / e.norm_path), int(e.label)))
    return out


def _issues(params: Params, images: list[Listed], classes: int) -> list[LabelIssue] | None:
    """Likely label errors among train and val, or None when there is no trained checkpoint."""
    from components.model.checkpoints import load_checkpoint, weights_path
    from components.model.label_issues import features, label_issues, out_of_fold_probabilities, unlearned

    weights = weights_path(params.evaluate.weight_path, params.train.output)
    if not weights.is_file():
        log.warning("No checkpoint at %s: label issues need a trained model (`sortflow train`)", weights)
        return None
    ckpt = load_checkpoint(weights, "evaluate.weight_path")
    labels = np.array([image.label for image in images])
    network = unlearned(ckpt, params.train.pretrained)
    summary = features(network, [image.file for image in images], params.evaluate.batch_size)
    return label_issues(out_of_fold_probabilities(summary, labels, classes, params.audit.folds), labels)


def _write_csvs(
    stage: Path, pairs: list[NearDuplicate], issues: list[LabelIssue], trained: list[Listed], names: dict[int, str]
) -> None:
    rows = [["a", "a_split", "a_label", "b", "b_split", "b_label", "distance", "cross_split", "labels_differ"]]
    for p in pairs:
        rows.append(
            [
                p.a.where + " " + p.a.path,
                p.a.split,
                names[p.a.label],
                p.b.where + " " + p.b.path,
                p.b.split,
                names[p.b.label],
                p.distance,
                p.cross_split,
                p.labels_differ,
            ]
        )
    _csv(stage / PAIRS_FILE, rows)
    rows = [["rank", "file", "split", "given", "suggested", "given_probability", "suggested_probability"]]
    for i in issues:
        image = trained[i.index]
        rows.append(
            [
                i.rank,
                f"{image.where} {image.path}",
                image.split,
                names[i.given],
                names[i.suggested],
                f"{i.given_probability:.4f}",
                f"{i.suggested_probability:.4f}",
            ]
        )
    _csv(stage / ISSUES_FILE, rows)


def _review_rows(issues: list[LabelIssue], trained: list[Listed], names: dict[int, str], out: Path) -> list[list[Any]]:
    """review.csv for `sortflow dataset add-reviewed`: each likely label error (its file relative to the audit
    folder), the given and the suggested label, and an empty `label` column for a person's verdict."""
    import os

    rows: list[list[Any]] = [["file", "given", "suggested", "suggested_probability", "label"]]
    for i in issues:
        image = trained[i.index]
        file = os.path.relpath(Path(image.file).resolve(), out.resolve())
        rows.append([file, names[i.given], names[i.suggested], f"{i.suggested_probability:.4f}", ""])
    return rows


def _csv(path: Path, rows: list[list[Any]]) -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    atomic_write_text(path, text.getvalue())


def _thumb(file: str) -> str:
    """An inline PNG thumbnail (a data: URL): the sheet is one file that opens anywhere."""
    from components.data.images import load_rgb

    image = load_rgb(file)
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(image: Listed, caption: str) -> str:
    return (
        f'<figure><img src="{_thumb(image.file)}" alt="{html.escape(image.path)}" width="{THUMB}">'
        f"<figcaption>{caption}<br><code>{html.escape(image.where)}</code></figcaption></figure>"
    )


def _sheet(pairs: list[NearDuplicate], issues: list[LabelIssue], trained: list[Listed], names: dict[int, str]) -> str:
    """The contact sheet: the first near-duplicate pairs side by side, then the likeliest label errors."""
    cards = [
        f'<div class="pair">{_figure(p.a, html.escape(names[p.a.label]))}{_figure(p.b, html.escape(names[p.b.label]))}'
        f"<p>{p.distance} bits apart{' · across splits' if p.cross_split else ''}"
        f"{' · two labels' if p.labels_differ else ''}</p></div>"
        for p in pairs[:SHEET_ROWS]
    ]
    found = [
        _figure(
            trained[i.index],
            f"given <b>{html.escape(names[i.given])}</b> ({i.given_probability:.2f}), "
            f"likely <b>{html.escape(names[i.suggested])}</b> ({i.suggested_probability:.2f})",
        )
        for i in issues[:SHEET_ROWS]
    ]
    style = "body{font-family:sans-serif} .pair,figure{display:inline-block;margin:6px;vertical-align:top}"
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>sortflow dataset audit</title>'
        f"<style>{style}</style></head><body>\n<h1>Near-duplicates ({len(pairs)})</h1>\n"
        + "\n".join(cards)
        + f"\n<h1>Likely label errors ({len(issues)})</h1>\n"
        + "\n".join(found)
        + "\n</body></html>\n"
    )


def _leak_check(pairs: list[NearDuplicate], fail: bool, stage: Path) -> dict[str, Any]:
    """The GX expectation that no near-duplicate pair crosses splits (a failure, or with audit.fail_on_leak
    off a warning); its validation result is written beside the report."""
    import great_expectations.expectations as gxe
    import pandas as pd

    from components.integrations.gx_report import gx_context, validate

    frame = pd.DataFrame({"pair": range(len(pairs)), "cross_split": [p.cross_split for p in pairs]})
    expectation = gxe.ExpectColumnValuesToBeInSet(
        column="cross_split",
        value_set=[False],
        severity="critical" if fail else "warning",
        description="no near-duplicate images sit in different splits",
    )
    _, validations = validate(gx_context(stage / "data_docs"), "near_duplicates", frame, [expectation], ["pair"])
    atomic_write_json(stage / "validation_result.json", validations)
    result = validations[0]["results"][0]
    return {"expectation": expectation.description, "success": result["success"], "severity": expectation.severity}


@locked("audit.output")
def audit(params: Params) -> AuditResult:
    """Audit the prepared dataset (split.output, else dataset.dir) and dataset.dir's production.txt.

    Reads the listed images and, for label errors, the checkpoint `evaluate.weight_path` (empty: best.pt in
    train.output). Writes `audit.output` whole. With `audit.fail_on_leak`, near-duplicates across splits
    make the command exit 1 (otherwise they are a warning).
    """
    from components.data.images import decode_all
    from components.data.partition import prepared_dataset

    a = params.audit
    root = prepared_dataset(params, check=False)
    names = label_names(root / "label.txt")
    images = _listed(root, Path(params.dataset.dir))
    hashes = list(decode_all(perceptual_hash, [image.file for image in images], params.dataset.num_workers))
    pairs = near_duplicates(images, hashes, a.max_hamming)
    trained = [image for image in images if image.split in SPLITS]
    issues = _issues(params, trained, len(names))
    out = Path(a.output)
    with staged_dir(out, replace=True) as stage:
        _write_csvs(stage, pairs, issues or [], trained, names)
        _csv(stage / REVIEW_FILE, _review_rows(issues or [], trained, names, out))
        atomic_write_text(stage / SHEET_FILE, _sheet(pairs, issues or [], trained, names))
        leak = _leak_check(pairs, a.fail_on_leak, stage)
        result = AuditResult(
            len(images),
            len(pairs),
            sum(p.cross_split for p in pairs),
            sum(p.labels_differ for p in pairs),
            None if issues is None else len(issues),
            a.fail_on_leak,
            str(out / RESULT_FILE),
        )
        atomic_write_json(stage / RESULT_FILE, {**result.to_json(), "leak_check": leak, "max_hamming": a.max_hamming})
    log.info("Audited %s: %s", root, result.text().splitlines()[0])
    return result
