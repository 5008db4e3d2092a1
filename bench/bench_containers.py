"""Size and time of the team stack in containers: the container tests (tests/containers) run once with Podman,
and the image sizes, build times and start-up times they measured are reported. Every image is built from
scratch in a storage of its own (no layer cache), with uv (the pipeline image) and pip downloading from the
package registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Result, record

REPO = Path(__file__).resolve().parents[1]


def run_tests(figures: Path) -> float:
    """The container tests in one process; their wall time in seconds."""
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/containers"],
        cwd=REPO,
        env={**os.environ, "SORTFLOW_CONTAINER_FIGURES": str(figures)},
        check=True,
    )
    return time.monotonic() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.json"
        wall = run_tests(figures)
        measured = json.loads(figures.read_text())
    rows = [[step, f"{seconds:.0f}"] for step, seconds in measured["timings"].items()]
    sizes = ", ".join(f"{tag} {size / 1e9:.1f} GB" for tag, size in measured["sizes"].items())
    record(
        Result(
            "containers",
            "Team stack in containers: build, size and start-up",
            "`pytest tests/containers` run once in one process: each image built with `podman build` (overlay "
            "storage, runc, host networking) from nothing but a Debian base made by mmdebstrap, uv or pip downloading "
            "every package (the pipeline image beside the others); then the demo pipeline inside the pipeline "
            "image (one epoch), deploy/compose.yaml up with podman-compose and its nightly training run (one "
            "epoch), and deploy/kubernetes/ played with `podman kube play`.",
            ["step", "seconds"],
            rows,
            [
                f"Image sizes (as `podman images` counts them): {sizes}.",
                f"The whole container test module: {wall / 60:.1f} min. Target: at most 12 min on 2 cores.",
            ],
        )
    )


if __name__ == "__main__":
    main()
