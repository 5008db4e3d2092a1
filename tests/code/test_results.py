"""Each step returns a typed result that renders itself: the terminal's text by default, JSON with --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from components.cli import RESULT_COMMANDS, build_parser
from components.core.results import StepResult, format_table, plain

Run = Callable[..., tuple[int, str, str]]


def test_check_and_split_print_text_or_json(run_cli: Run, dataset: Path) -> None:
    code, out, _ = run_cli("check-dataset", str(dataset), "-o", "dataset.num_workers=1")
    assert code == 0 and "Check dataset passed !" in out
    code, out, _ = run_cli("check-dataset", str(dataset), "-o", "dataset.num_workers=1", "--json")
    result = json.loads(out)
    assert code == 0 and result["check_pass"] is True and result["dataset_type"] == "ClsDataset"
    code, out, _ = run_cli("split", str(dataset), "-o", "split.output=split", "--json")
    split = json.loads(out)
    assert code == 0 and split["output"] == "split" and split["counts"]["classes"] == 3 and split["resplit"] is False


def test_every_result_command_takes_json() -> None:
    parser = build_parser()
    for name in RESULT_COMMANDS:
        args = parser.parse_args([*name.split(), *(["1"] * _positionals(name)), "--json"])
        assert args.json is True, name


def _positionals(name: str) -> int:
    return {"dataset convert": 2, "dataset demo": 1, "dataset add-reviewed": 1, "promote": 1}.get(name, 0)


def test_results_become_plain_json() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Inner:
        where: Path

    @dataclass(frozen=True)
    class Outer(StepResult):
        inner: Inner
        names: tuple[str, ...]

        def text(self) -> str:
            return "outer"

    assert Outer(Inner(Path("a/b")), ("x",)).to_json() == {"inner": {"where": "a/b"}, "names": ["x"]}
    assert plain({1: {Path("p")}}) == {"1": ["p"]}
    assert format_table(["a", "b"], [{"a": 1, "b": "two"}]).count("two") == 1
