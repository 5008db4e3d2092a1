"""The benchmark tables: each benchmark records its current figures in `bench/results/NAME.json` (with the
date, the processor and the command that produced them), and `python -m bench.report` writes BENCHMARKS.md
from those files. History lives in git, not in the file."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
# The order of the sections in BENCHMARKS.md; a result not listed here comes after them, by name.
ORDER = (
    "check_dataset",
    "train_throughput",
    "train_accuracy",
    "decisions",
    "peer",
    "serving",
    "serving_lcnet_100",
    "serving_lcnet_050",
    "bytes_frames",
    "bytes_trashnet",
    "shadow",
    "monitor",
    "orchestration",
    "team",
    "containers",
)
HEADER = """# Benchmarks

Each table holds the current figures of one benchmark under `bench/`, measured side by side in one run
(`make bench` runs them all) on the machine it names. Compare ratios within a table, not seconds across
tables: the processor behind the project's 2-core machine has changed between runs. This file is written
by `python -m bench.report` from `bench/results/*.json`, which each benchmark rewrites when it runs;
earlier figures are in the history of those files.
"""


@dataclass
class Result:
    """One benchmark's current table."""

    name: str
    title: str
    about: str  # what is measured against what, in a few sentences
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)  # the ratio, the target and whether it is met
    command: str = ""
    date: str = ""
    machine: str = ""


def processor() -> str:
    """This machine as a table's caption names it: cores, processor model, memory."""
    model = platform.processor() or "unknown processor"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {model}, {memory:.0f} GB, Python {platform.python_version()}"


def record(result: Result) -> Path:
    """Write `result` as the current figures of its benchmark, stamped with today, this machine and the
    command that ran; prints its table too."""
    module = Path(sys.argv[0]).stem
    result.command = result.command or " ".join(["python -m bench." + module, *sys.argv[1:]])
    result.date = result.date or date.today().isoformat()
    result.machine = result.machine or processor()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result.name}.json"
    path.write_text(json.dumps(asdict(result), indent=2, ensure_ascii=False) + "\n")
    print(section(result))
    return path


def section(result: Result) -> str:
    """A result as its section of BENCHMARKS.md."""
    lines = [
        f"## {result.title}",
        "",
        f"Measured on {result.date} ({result.machine}) by `{result.command}`.",
        "",
        result.about,
        "",
        "| " + " | ".join(result.columns) + " |",
        "|" + "---|" * len(result.columns),
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in result.rows]
    if result.notes:
        lines += ["", *(f"- {note}" for note in result.notes)]
    return "\n".join(lines) + "\n"


def load() -> list[Result]:
    """Every recorded result, in the order of ORDER."""
    results = [Result(**json.loads(p.read_text())) for p in sorted(RESULTS.glob("*.json"))]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(results, key=lambda r: (rank.get(r.name, len(ORDER)), r.name))


def render(results: list[Result]) -> str:
    """BENCHMARKS.md."""
    return HEADER + "".join("\n" + section(r) for r in results)


if __name__ == "__main__":
    BENCHMARKS.write_text(render(load()))
    print(f"wrote {BENCHMARKS}")
