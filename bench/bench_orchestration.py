"""Orchestration overhead, side by side in one run, on three identical copies of the project.

1. bare: the component steps called one after another in one Python process (imports included); their
   summed time is the work itself.
2. dvc: `dvc repro` (one `sortflow` process per stage), then the `dvc repro` no-op time (median of 5).
3. prefect: `sortflow run` against a running local Prefect server (whole command, and the flow run from
   its start to its end as the server recorded them), and with Prefect's temporary server.
Overhead = wall time of the orchestrated run minus the bare steps' summed time; also reported against the
bare run's wall time, which pays the same Python start-up and imports once. Data: the bundled demo
digits (1,797 images), EfficientNet-Lite0 with its ImageNet weights, 64 px, 1 epoch.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import Result, record
from tests.support.helpers import free_port
from tests.support.project import project_copy
from tests.support.services import command_env, sh, stop_group

REPO = Path(__file__).resolve().parents[1]

OVERRIDES = ["train.epochs=1", "export.parity_images=32"]


def copy_project(dst: Path) -> Path:
    """A git copy of the project (see tests/orchestration) with the demo data and OVERRIDES in params.yaml."""
    project_copy(dst, *OVERRIDES, data=False, base=())
    sh(["sortflow", "dataset", "demo", "data"], dst)
    sh(["dvc", "add", "-q", "data"], dst)
    return dst


def bare(project: Path) -> dict[str, float]:
    """Each component step, timed, in one process started for the purpose."""
    code = """
import json, sys, time
t0 = time.perf_counter()
from components.core.config import load_params
from components.integrations import dvc_data
from components.steps import check_dataset, evaluate, export, publish, register, split, train
params = load_params("params.yaml")
steps = {
    "pull": lambda: dvc_data.pull(params.dataset.dir),
    "check": lambda: check_dataset.check_step(params),
    "split": lambda: split.split_step(params),
    "train": lambda: train.train(params),
    "evaluate": lambda: evaluate.evaluate(params),
    "export": lambda: export.export(params),
    "register": lambda: register.register(params),
    "publish": lambda: publish.publish(params),
}
times = {"imports": time.perf_counter() - t0}
for name, step in steps.items():
    began = time.perf_counter()
    step()
    times[name] = time.perf_counter() - began
print(json.dumps(times))
"""
    began = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=command_env(), capture_output=True, text=True, check=True
    )
    times = json.loads(out.stdout.strip().splitlines()[-1])
    times["wall"] = time.perf_counter() - began
    return times


def timed(args: list[str], project: Path, **env: str) -> float:
    began = time.perf_counter()
    sh(args, project, **env)
    return time.perf_counter() - began


def prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=command_env(PREFECT_HOME=str(home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    import httpx

    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("Prefect server did not start")


def flow_run_seconds(url: str) -> float:
    """Start to end of the newest flow run, as the Prefect server recorded it."""
    from datetime import datetime

    import httpx

    runs = httpx.post(f"{url}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}, timeout=10).json()
    start, end = (datetime.fromisoformat(runs[0][key]) for key in ("start_time", "end_time"))
    return (end - start).total_seconds()


@dataclass(frozen=True)
class Timings:
    """Wall times in seconds of one side-by-side run."""

    bare: dict[str, float]  # each step's own time, the imports, and the whole process
    dvc: float
    noop: float
    with_server: float
    flow_run: float
    temporary: float

    @property
    def steps(self) -> float:
        """The steps' summed time: the work itself."""
        return steps_sum(self.bare)


def steps_sum(bare_times: dict[str, float]) -> float:
    """The summed time of the steps that `bare` timed, less its imports and its process's wall time."""
    return sum(v for k, v in bare_times.items() if k not in ("wall", "imports"))


def measure(root: Path) -> Timings:
    """The bare steps, `dvc repro` and its no-op, and `sortflow run` with both Prefect servers, each on its
    own copy of the project under `root`."""
    projects = {name: copy_project(root / name / "project") for name in ("bare", "dvc", "server", "temporary")}
    times = bare(projects["bare"])
    steps = steps_sum(times)
    print(f"bare: steps {steps:.1f} s, imports {times['imports']:.1f} s, wall {times['wall']:.1f} s")
    dvc = timed(["dvc", "repro"], projects["dvc"])
    noop = statistics.median(timed(["dvc", "repro"], projects["dvc"]) for _ in range(5))
    print(f"dvc repro: {dvc:.1f} s (overhead {dvc - steps:.1f} s); no-op {noop:.2f} s")
    server, url = prefect_server(root / "prefect-home")
    try:
        with_server = timed(["sortflow", "run"], projects["server"], PREFECT_API_URL=url)
        flow_run = flow_run_seconds(url)
    finally:
        stop_group(server)
    print(f"sortflow run (running server): {with_server:.1f} s; the flow run itself {flow_run:.1f} s")
    temporary = timed(["sortflow", "run"], projects["temporary"], PREFECT_HOME=str(root / "prefect-home-temporary"))
    print(f"sortflow run (temporary server): {temporary:.1f} s (overhead {temporary - steps:.1f} s)")
    return Timings(times, dvc, noop, with_server, flow_run, temporary)


def write_json(t: Timings) -> None:
    """bench/out/orchestration.json: every figure, rounded to 10 ms."""
    steps, wall = t.steps, t.bare["wall"]
    report = {
        "bare_steps_s": {k: round(v, 2) for k, v in t.bare.items()},
        "bare_steps_sum_s": round(steps, 2),
        "dvc_repro_s": round(t.dvc, 2),
        "dvc_overhead_s": round(t.dvc - steps, 2),
        "dvc_noop_s": round(t.noop, 2),
        "prefect_server_s": round(t.with_server, 2),
        "prefect_server_overhead_s": round(t.with_server - steps, 2),
        "prefect_flow_run_s": round(t.flow_run, 2),
        "prefect_flow_run_overhead_s": round(t.flow_run - steps, 2),
        "bare_wall_s": round(wall, 2),
        "dvc_minus_bare_wall_s": round(t.dvc - wall, 2),
        "prefect_server_minus_bare_wall_s": round(t.with_server - wall, 2),
        "prefect_temporary_minus_bare_wall_s": round(t.temporary - wall, 2),
        "prefect_temporary_s": round(t.temporary, 2),
        "prefect_temporary_overhead_s": round(t.temporary - steps, 2),
        "cpu_count": os.cpu_count(),
    }
    out = REPO / "bench" / "out" / "orchestration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sortflow-bench-") as tmp:
        t = measure(Path(tmp))
    write_json(t)
    steps, wall = t.steps, t.bare["wall"]
    record(
        Result(
            "orchestration",
            "Orchestration overhead: `dvc repro` and the Prefect flow vs the bare steps",
            "Identical git copies of the project run the whole pipeline on the demo data: the steps called in "
            "one process, `dvc repro` (one `sortflow` process per stage), and `sortflow run` with a running "
            "Prefect server and with Prefect's temporary one. Overhead is each path's wall time less the sum "
            "of the steps' own times.",
            ["run", "wall time (s)", "minus the steps' sum (s)", "minus the bare wall time (s)"],
            [
                ["bare steps, one process", f"{wall:.1f}", f"{wall - steps:.1f}", "0"],
                ["`sortflow run`, running Prefect server", f"{t.with_server:.1f}", f"{t.with_server - steps:.1f}",
                 f"{t.with_server - wall:.1f}"],
                ["the same flow run, as the Prefect server recorded it", f"{t.flow_run:.1f}",
                 f"{t.flow_run - steps:.1f}", ""],
                ["`sortflow run`, Prefect's temporary server", f"{t.temporary:.1f}", f"{t.temporary - steps:.1f}",
                 f"{t.temporary - wall:.1f}"],
                ["`dvc repro` (7 stages)", f"{t.dvc:.1f}", f"{t.dvc - steps:.1f}", f"{t.dvc - wall:.1f}"],
                ["`dvc repro` when nothing changed (median of 5)", f"{t.noop:.2f}", "", ""],
            ],
            ["Targets: overhead under 10 s for each path, and a `dvc repro` no-op under 2 s."],
        )
    )


if __name__ == "__main__":
    main()
