"""The reference pages of the docs site, written from the code: every command and option (the argparse
parser), every parameter with its type, default, rule and meaning (the typed config, its rules and the
comments of params.yaml), and every exit code (the CLI's table).

`python -m tests.support.reference` (or `make docs`) writes them; a test fails while they are stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGES_DIR = ROOT / "docs" / "reference"
GENERATED = "<!-- Written by `python -m tests.support.reference` from the code: edit the code, not this page. -->"
COMMON = {"help", "params", "override"}  # options every command takes, listed once at the top


def params_comments(path: Path) -> dict[str, str]:
    """Each `section.key` of a params file with the comment on its line and the lines that continue it."""
    found: dict[str, str] = {}
    section = key = ""
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.split(":")[0]
        elif line.startswith("  ") and not line.strip().startswith("#"):
            key = f"{section}.{line.split(':')[0].strip()}"
            found[key] = line.partition("#")[2].strip()
        elif line.strip().startswith("#") and key:
            found[key] += " " + line.strip().lstrip("#").strip()
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(full name, help, parser) of every command under `parser`, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if nested:
                    yield from _subcommands(sub, f"{prefix} {name}")
                else:
                    yield f"{prefix} {name}", helps.get(name, ""), sub


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    flags = ", ".join(f"`{s}`" for s in action.option_strings)
    takes = action.nargs != 0
    return f"{flags} `{action.metavar or action.dest.upper()}`" if takes else flags


def commands_page() -> str:
    from components.cli import build_parser

    parser = build_parser()
    lines = [
        "# Commands",
        "",
        GENERATED,
        "",
        "Every command that reads parameters takes `--params PATH` (default: `./params.yaml` if present) and",
        "`-o SECTION.KEY=VALUE` (repeatable), with the names of the [parameters](parameters.md). Exit codes are",
        "on [their own page](exit-codes.md).",
        "",
    ]
    for name, text, sub in _subcommands(parser, "sortflow"):
        lines += [f"## {name}", "", f"{text[0].upper()}{text[1:]}." if text else "", ""]
        own = [a for a in sub._actions if a.dest not in COMMON]
        if own:
            lines += ["| argument | meaning |", "| --- | --- |"]
            lines += [f"| {_option(a)} | {_cell(a.help or '')} |" for a in own]
            lines.append("")
        if any(a.dest == "override" for a in sub._actions):
            lines += ["Takes `--params` and `-o`.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _shown(value: object) -> str:
    if value == "":
        return "empty"
    return f"`{yaml.safe_dump(value).removesuffix(chr(10) + '...' + chr(10)).strip()}`"


def parameters_page() -> str:
    from components.core.config import RULES, Params

    comments = params_comments(ROOT / "params.yaml")
    lines = [
        "# Parameters",
        "",
        GENERATED,
        "",
        "Every parameter has a built-in default. `params.yaml` in the current folder (or `--params PATH`)",
        "replaces defaults, and `-o section.key=value` (repeatable) replaces both; `dvc exp run -S` and the",
        "Prefect flows' `overrides` use the same names. Where the project's `params.yaml` (tuned for the demo",
        "data) holds another value, its meaning says `(built-in: ...)` and why. `sortflow params` prints the",
        "resolved values.",
        "",
    ]
    built_in = Params()
    for section in dataclasses.fields(Params):
        lines += [f"## {section.name}", "", "| key | type | default | allowed | meaning |", "| --- " * 5 + "|"]
        values = getattr(built_in, section.name)
        hints = typing.get_type_hints(type(values))
        for field in dataclasses.fields(values):
            key = f"{section.name}.{field.name}"
            rule = RULES[key].text if key in RULES else "any"
            default = _shown(getattr(values, field.name))
            meaning = comments.get(key, "")
            lines.append(f"| `{key}` | {hints[field.name].__name__} | {default} | {_cell(rule)} | {_cell(meaning)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def exit_codes_page() -> str:
    from components.cli import EXIT_CODES

    lines = ["# Exit codes", "", GENERATED, "", "| code | meaning |", "| --- | --- |"]
    lines += [f"| {code} | {_cell(text)} |" for code, text in EXIT_CODES.items()]
    return "\n".join(lines) + "\n"


PAGES: dict[str, Callable[[], str]] = {
    "commands.md": commands_page,
    "parameters.md": parameters_page,
    "exit-codes.md": exit_codes_page,
}


def stale() -> list[str]:
    """The reference pages whose text is not what the code gives now."""
    pages = {name: PAGES_DIR / name for name in PAGES}
    return [name for name, make in PAGES.items() if not pages[name].is_file() or pages[name].read_text() != make()]


def main() -> None:
    from components.core.fsutil import atomic_write_text

    for name, make in PAGES.items():
        atomic_write_text(PAGES_DIR / name, make())
        print(f"wrote {PAGES_DIR / name}")


if __name__ == "__main__":
    main()
