"""The cost of a shadow run on `<model>_bytes`, side by side in one run.

Two servers of the same champion on TrashNet's 112 px JPEGs (the model of the bytes benchmark: EfficientNet-
Lite0 at 64 px, one epoch): one plain, one with a second registry version shadowing it at
`serve.shadow_rate=0.2` (`sortflow shadow`). `sortflow bench-serve`'s load at concurrency 4 alternates
between them in three rounds; medians. Then the capture of the shadowed server: the share of the sampled
requests that reached it with both answers (Triton's sortflow_capture_samples_total counters).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.bench_bytes import MODEL, WORK, overrides, requests_of, setting, sortflow
from bench.bench_train import dataset
from bench.report import Result, record
from components.steps.bench_serve import image_files, run_level
from components.steps.monitor import triton_metrics
from tests.support.overrides import without_published

LEVEL, COUNT, RATE = 4, 400, 0.2


def servers(data: Path) -> dict[str, list[str]]:
    """The plain server and the shadowed one (a second registered version of the same export shadows it)."""
    WORK.mkdir(parents=True, exist_ok=True)
    plain = overrides(data, "plain", ())
    shadowed = overrides(data, "shadowed", (f"publish.capture_dir={WORK / 'capture_shadow'}",))
    if not (WORK / "output/export/model.onnx").is_file():
        for step in ("train", "export", "register"):
            sortflow(step, *plain)
    sortflow("register", *plain, "-o", "register.min_improvement=1")  # a challenger, not promoted
    challenger = json.loads((WORK / "output/register/register_result.json").read_text())["version"]
    for args in (plain, shadowed):
        sortflow("publish", *args)
        sortflow("serve", *without_published(args))
    sortflow("shadow", str(challenger), *shadowed, "-o", f"serve.shadow_rate={RATE}")
    return {"plain": plain, "shadowed": shadowed}


def main() -> None:
    data = dataset()
    setups = servers(data)
    try:
        inputs = requests_of([p.read_bytes() for p in image_files((str(data / "images"),))[:COUNT]])
        rates: dict[str, list[float]] = {name: [] for name in setups}
        p99: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(3):
            for name, args in setups.items():
                url = f"127.0.0.1:{setting(args, 'serve.grpc_port')}"
                fields, error = run_level(url, MODEL, inputs, LEVEL, COUNT, 60)
                assert error is None, error
                rates[name].append(fields["per_second"])
                p99[name].append(fields["p99_ms"])
        counters = triton_metrics(int(setting(setups["shadowed"], "serve.metrics_port")))
    finally:
        for args in setups.values():
            sortflow("serve", "--stop", *without_published(args))
    med = {name: statistics.median(values) for name, values in rates.items()}
    ratio = med["shadowed"] / med["plain"]
    samples = counters.get("sortflow_capture_samples_total", {})
    captured = sum(v for k, v in samples.items() if k.endswith(":captured"))
    dropped = sum(v for k, v in samples.items() if k.endswith(":dropped"))
    records = [
        json.loads(line)
        for path in (WORK / "capture_shadow" / "records").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    both = sum("shadow" in r for r in records) / max(len(records), 1)
    kept = captured / max(captured + dropped, 1)
    record(
        Result(
            "shadow",
            "Shadow runs on `<model>_bytes`: throughput and capture",
            f"{COUNT} TrashNet 112 px JPEGs per round, one per request over gRPC at concurrency {LEVEL}, on a plain "
            f"server and on one where a second registered version shadows the champion at serve.shadow_rate={RATE} "
            "(default publish settings otherwise; capture off, so only shadowed requests are captured). Three "
            "alternating rounds; medians.",
            ["server", f"requests/s at c{LEVEL}", "p99 latency", "all rounds"],
            [
                [name, f"{med[name]:.0f}", f"{statistics.median(p99[name]):.0f} ms", ", ".join(f"{x:.0f}" for x in v)]
                for name, v in rates.items()
            ],
            [
                f"Ratio shadowed / plain: {ratio:.3f}x. Target: at least 0.85x: "
                f"{'met' if ratio >= 0.85 else 'not met'}.",
                f"Sampled requests captured with both answers: {captured:.0f} of {captured + dropped:.0f} ({kept:.1%}; "
                f"{both:.1%} of the records carry the shadow's answer). Target: at least 99%: "
                f"{'met' if kept * both >= 0.99 else 'not met'}.",
            ],
        )
    )


if __name__ == "__main__":
    main()
