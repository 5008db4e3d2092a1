"""monitor: does the served model still see what it was trained for? Captured traffic against the reference.

Reads the last `monitor.window_hours` of captured requests (`publish.capture_dir`) and the reference profile
of the version that served them (its val set: predicted classes, top-1 confidence, image statistics).
Runs the drift tests (`drift`) and a Great Expectations suite over the window's manifest and the test
results, with Data Docs, in the style of check-dataset; reads Triton's own metrics from the metrics port.
Writes `monitor.output`: monitor_result.json, monitor.png, window.csv and data_docs/; logs an MLflow run per
window.
"""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.config import Params
from components.core.fsutil import atomic_write_json, staged_dir
from components.core.locks import locked
from components.core.plots import figure, save_png
from components.core.results import StepResult, plain
from components.integrations import mlflow_tracking
from components.traffic import drift
from components.traffic.windows import (
    ShadowAgreement,
    drift_tests,
    live_table,
    load_profile,
    served_window,
    shadow_agreement,
)

log = logging.getLogger(__name__)

RESULT_FILE = "monitor_result.json"
PLOT_FILE = "monitor.png"
DRIFT_EXIT = 3  # `sortflow monitor` exits with this when the window drifted: not an error, a finding
TRITON_METRICS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "sortflow_capture_samples_total",
)


def triton_metrics(port: int) -> dict[str, Any]:
    """Triton's counters from its metrics port (Prometheus text), summed per metric and model; {} when down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            text = response.read().decode()
    except OSError as exc:
        log.warning("Triton metrics on 127.0.0.1:%d cannot be read (%s); the report leaves them out", port, exc)
        return {}
    metrics: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name not in TRITON_METRICS or "}" not in rest:
            continue
        labels, _, value = rest.rpartition("}")
        fields = {k: v.strip('"') for k, _, v in (part.partition("=") for part in labels.split(","))}
        key = ":".join(fields[k] for k in ("model", "outcome") if k in fields)  # summed over versions, reasons
        metrics.setdefault(name, {})
        metrics[name][key] = metrics[name].get(key, 0.0) + float(value)
    return metrics


def _plot(live: pd.DataFrame, profile: dict[str, Any], findings: list[drift.Finding], path: Path) -> None:
    """Reference against live: class mix, top-1 confidence, brightness and, where the version has an embedder,
    the novelty scores (with the embedding drift test's verdict)."""
    labels = profile["labels"]
    decoded = live[live["decoded"]]
    panels = [
        (decoded["confidence"], profile["confidence"], "top-1 confidence"),
        (live["brightness"].dropna(), profile["stats"]["brightness"], "brightness"),
    ]
    if "embedding" in profile:
        test = next(f for f in findings if f.check == "embedding drift")
        verdict = f"embedding drift p={test.p_value:.2g}: {'DRIFT' if test.drift else 'ok'}"
        panels.append((decoded["novelty"].dropna(), profile["embedding"]["val_novelty"], f"novelty ({verdict})"))
    fig = figure(4.7 * (len(panels) + 1), 4)
    ax = fig.add_subplot(1, len(panels) + 1, 1)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, drift.class_shares(profile["predicted"], len(labels)), 0.4, label="reference")
    ax.bar(x + 0.2, drift.class_shares(decoded["class_id"], len(labels)), 0.4, label="live")
    ax.set_xticks(x, labels, rotation=90)
    ax.set_title("predicted class mix")
    ax.legend()
    for i, (values, reference, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels) + 1, i + 2)
        ax.hist(reference, bins=20, alpha=0.6, density=True, label="reference")
        ax.hist(values, bins=20, alpha=0.6, density=True, label="live")
        ax.set_title(title)
        ax.legend()
    save_png(fig, path, dpi=100)


def _gx_suite(live: pd.DataFrame, findings: list[drift.Finding], params: Params, report_dir: Path) -> list[dict]:
    """The window as a GX suite with Data Docs: the drift tests' verdicts, and the requests themselves."""
    import great_expectations.expectations as gxe

    from components.integrations.gx_report import build_docs, gx_context, validate

    m = params.monitor
    context = gx_context(report_dir / "data_docs")
    tables = {
        "drift_tests": (
            pd.DataFrame([vars(f) for f in findings]),
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="p_value",
                    min_value=findings[0].threshold,
                    description=f"no drift: every test's p-value is at least monitor.alpha / {len(findings)}",
                )
            ],
            ["check"],
        ),
        "requests": (
            live[["time", "version", "sha", "decoded", "label", "confidence"]],
            [
                gxe.ExpectColumnValuesToBeInSet(
                    column="decoded",
                    value_set=[True],
                    mostly=1 - m.max_undecodable_share,
                    description="requests decode (all but monitor.max_undecodable_share)",
                )
            ],
            ["time", "sha"],
        ),
    }
    results = []
    for table, (frame, expectations, index) in tables.items():
        _, validations = validate(context, table, frame, expectations, index)
        results += [
            {"table": table, "expectation": r["expectation_config"]["description"], "success": bool(r["success"])}
            for v in validations
            for r in v["results"]
        ]
    build_docs(context)
    return results


@dataclass(frozen=True)
class MonitorResult(StepResult):
    model: str
    version: str
    drift: bool
    verdict: str  # "no drift", or "drift in" the checks that found it
    checks: list[drift.Finding]
    window_samples: int
    window_hours: float
    report: str  # monitor_result.json
    shadow: ShadowAgreement | None = None  # a shadow run's agreement with the served version, if one ran

    def text(self) -> str:
        lines = [f"{'check':22} {'statistic':>10} {'p-value':>10} {'threshold':>10}  verdict"]
        for c in self.checks:
            numbers = f"{c.statistic:10.4g} {c.p_value:10.3g} {c.threshold:10.3g}"
            lines.append(f"{c.check:22} {numbers}  {'DRIFT' if c.drift else 'ok'}  {c.detail}")
        served = f"{self.model} version {self.version}: {self.window_samples} requests in {self.window_hours:g} h"
        lines.append(f"{served}: {self.verdict}")
        if self.shadow is not None:
            lines.append(self.shadow.text())
        report = Path(self.report).parent
        lines.append(f"Report: {self.report} (Data Docs: {report}/data_docs/index.html)")
        return "\n".join(lines)

    @property
    def exit_code(self) -> int:
        return DRIFT_EXIT if self.drift else 0


@locked("monitor.output")
def monitor(params: Params) -> MonitorResult:
    """Check the last `monitor.window_hours` of captured traffic for drift against the served version's reference.

    Reads `publish.capture_dir`, the reference profile (beside the published model, else in the registry) and
    Triton's metrics port. Writes `monitor.output` whole: monitor_result.json (each check with its statistic,
    p-value, threshold and verdict, and a shadow run's agreement and flips), monitor.png, window.csv and
    data_docs/; logs an MLflow run tagged with the served version. Raises SortflowError when there is no
    capture folder or too few samples.
    """
    m = params.monitor
    window, version, served = served_window(params)
    profile = load_profile(params, version)
    live = live_table(served, profile["labels"])
    findings = drift_tests(live, profile, params)
    shadow = shadow_agreement(served, profile["labels"])
    drifted = [f.check for f in findings if f.drift]
    result: dict[str, Any] = {
        "drift": bool(drifted),
        "verdict": f"drift in {', '.join(drifted)}" if drifted else "no drift",
        "model": params.register.model_name,
        "version": version,
        "window": {
            "hours": m.window_hours,
            "start": window.start,
            "end": window.end,
            "samples": len(served),
            "other_versions": len(window.samples) - len(served),
            "skipped_records": window.skipped,
            "missing_images": int((~live["image_present"]).sum()),
        },
        "reference_images": profile["images"],
        "checks": [vars(f) for f in findings],
        "shadow": plain(shadow),
        "triton": triton_metrics(params.serve.metrics_port),
    }
    out = Path(m.output)
    tags = {"sortflow.kind": "monitor", "sortflow.served_model": result["model"], "sortflow.served_version": version}
    tags["sortflow.drift"] = str(result["drift"])
    with mlflow_tracking.tagged_run(params.mlflow, f"monitor-{version}-{int(window.end)}", tags) as run:
        result["mlflow_run_id"] = run.run_id
        with staged_dir(out, replace=True) as stage:
            result["expectations"] = _gx_suite(live, findings, params, stage)
            live.drop(columns="embedding").to_csv(stage / "window.csv", index=False)
            _plot(live, profile, findings, stage / PLOT_FILE)
            atomic_write_json(stage / RESULT_FILE, result)
        p_values = {f"p_{f.check.replace(' ', '_').replace('-', '_')}": f.p_value for f in findings}
        run.log_metrics({**p_values, "samples": len(served)}, step=0)
        run.log_artifacts([out / RESULT_FILE, out / PLOT_FILE])
    log.info("Monitored %d requests of %s version %s: %s", len(served), result["model"], version, result["verdict"])
    return MonitorResult(
        result["model"], version, result["drift"], result["verdict"], findings, len(served), m.window_hours,
        str(out / RESULT_FILE),
        shadow,
    )
