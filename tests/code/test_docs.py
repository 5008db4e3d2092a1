"""The docs site: reference pages current with the code, a strict build, and a README that stays a front door."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.reference import ROOT, stale

README_MAX_LINES = 200


def test_generated_reference_pages_are_current() -> None:
    assert stale() == [], "run `python -m tests.support.reference` (make docs) and commit docs/reference/"


def test_every_command_and_parameter_is_in_the_reference() -> None:
    from components.cli import build_parser
    from components.core.config import valid_keys
    from tests.support.reference import _subcommands

    commands = (ROOT / "docs/reference/commands.md").read_text()
    assert all(f"## {name}\n" in commands for name, _, _ in _subcommands(build_parser(), "sortflow"))
    parameters = (ROOT / "docs/reference/parameters.md").read_text()
    assert [key for key in valid_keys() if f"| `{key}` |" not in parameters] == []


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """No broken link, no page outside the nav; built outside the source tree."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is missing: it is a dev dependency (make test installs it)"
    run = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "site/index.html").is_file()


def test_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make demo" in text and "make test" in text


def test_readme_lists_every_command() -> None:
    from components.cli import build_parser
    from tests.support.reference import _subcommands

    table = (ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    missing = [name for name, _, _ in _subcommands(build_parser(), "sortflow") if f"`{name}`" not in table]
    assert missing == []


def test_benchmarks_file_is_written_from_the_recorded_results() -> None:
    from bench.report import BENCHMARKS, load, render

    assert BENCHMARKS.read_text() == render(load()), "run `python -m bench.report` and commit BENCHMARKS.md"
    assert all(r.date and r.machine and r.command.startswith("python -m bench.") for r in load())
