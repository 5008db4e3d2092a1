"""The pipeline's summary: what the reports of each step say, as one markdown text.

Read from the files the steps write, so the DVC path, the Prefect flows and `make demo` report alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.core.config import Params
from components.data.gate import RESULT_FILE
from components.data.partition import SPLIT_RESULT
from components.data.report import data_docs_index


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def served_version(params: Params) -> int | None:
    """The newest version folder of the classifier in `publish.repo`, if it has been published."""
    model_dir = Path(params.publish.repo) / params.register.model_name
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=None)


def pipeline_summary(params: Params) -> dict[str, Any]:
    """Dataset counts, top-1/top-5, the promotion decision and the Triton model, from the step reports."""
    reports = {
        "check": Path(params.dataset.output) / RESULT_FILE,
        "data_docs": data_docs_index(params.dataset),
        "train": Path(params.train.output),
        "evaluate": Path(params.evaluate.output) / "evaluate_result.json",
        "register": Path(params.register.output) / "register_result.json",
    }
    check, evaluation, registered = (_json(reports[k]) for k in ("check", "evaluate", "register"))
    split = _json(Path(params.split.output) / SPLIT_RESULT) if params.split.output else None
    if split:
        train_samples, val_samples = split["train"], split["val"]
    elif check:
        train_samples, val_samples = check["attributes"]["train_samples"], check["attributes"]["val_samples"]
    else:
        train_samples = val_samples = None
    return {
        "dataset": params.dataset.dir,
        "check_pass": check["check_pass"] if check else None,
        "classes": check["attributes"]["num_classes"] if check else None,
        "train_samples": train_samples,
        "val_samples": val_samples,
        "top1": evaluation["metrics"]["val.top1"] if evaluation else None,
        "top5": evaluation["metrics"]["val.top5"] if evaluation else None,
        "model": evaluation["model_name"] if evaluation else params.train.model,
        "calibration": evaluation.get("calibration") if evaluation else None,
        "reject": evaluation.get("reject") if evaluation else None,
        "registry_version": registered["version"] if registered else None,
        "decision": registered["decision"] if registered else None,
        "triton_model": params.register.model_name,
        "triton_version": served_version(params),
        "triton_repo": params.publish.repo,
        "reports": {k: str(p) for k, p in reports.items() if p.exists()},
    }


def _fmt(value: Any, pattern: str = "{}") -> str:
    return "n/a" if value is None else pattern.format(value)


def _confidence_row(summary: dict[str, Any]) -> str:
    cal, reject = summary.get("calibration"), summary.get("reject")
    if not cal or not reject:
        return "| confidence | not calibrated |"
    return (
        f"| confidence | temperature {cal['temperature']:.3f}, ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}; "
        f"unsure below the class thresholds: coverage {reject['coverage']:.1%}, error of the answered "
        f"{reject['accepted_error']:.2%} (all: {reject['overall_error']:.2%}) |"
    )


def summary_markdown(summary: dict[str, Any]) -> str:
    reports = summary["reports"]
    check = {True: "passed", False: "FAILED", None: "not run"}[summary["check_pass"]]
    lines = [
        "## sortflow pipeline",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | `{summary['dataset']}`: {_fmt(summary['classes'])} classes, "
        f"{_fmt(summary['train_samples'])} train / {_fmt(summary['val_samples'])} val images; check {check} |",
        f"| model | {summary['model']}: val top-1 **{_fmt(summary['top1'], '{:.4f}')}**, "
        f"top-5 {_fmt(summary['top5'], '{:.4f}')} |",
        _confidence_row(summary),
        f"| registry | version {_fmt(summary['registry_version'])}: {_fmt(summary['decision'])} |",
        f"| Triton | `{summary['triton_model']}` version {_fmt(summary['triton_version'])} in "
        f"`{summary['triton_repo']}/` (also `{summary['triton_model']}_bytes` for encoded images) |",
        "",
        "Reports: " + ", ".join(f"`{path}`" for path in reports.values() if path),
    ]
    return "\n".join(lines) + "\n"
