"""check-dataset's outputs: PaddleX's `check_dataset_result.json`, `check_dataset/demo_img/` and
`check_dataset/histogram.png`, the GX suite's Data Docs, and the text the terminal shows."""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.core.config import DatasetParams
from components.core.fsutil import atomic_write_json, staged_dir
from components.core.plots import figure, save_png
from components.data.cls_dataset import LABEL_FILE, SPLITS, label_names
from components.data.expectations import DATA_DOCS, CheckResult, run_suite
from components.data.gate import RESULT_FILE
from components.data.images import draw_lines, load_rgb
from components.data.manifest import Manifest, build_manifest

log = logging.getLogger(__name__)

REPORT_DIR = "check_dataset"


def data_docs_index(params: DatasetParams) -> Path:
    """The Great Expectations Data Docs page that check-dataset writes."""
    return Path(params.output) / REPORT_DIR / DATA_DOCS / "index.html"


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


def run_check(params: DatasetParams) -> CheckReport:
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
            "production_samples": int((manifest.images["split"] == "production").sum()),
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


