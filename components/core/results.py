"""What a step returns: a typed result that the CLI and the flows both use, instead of a step's internals.

Each step's result is a frozen dataclass over `StepResult`: `text()` is what the terminal shows, `to_json()`
the same as JSON (`sortflow COMMAND --json`), and `exit_code` what the command exits with when it ran.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """`value` with paths as text and dataclasses, tuples and sets as JSON's own types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


@dataclasses.dataclass(frozen=True)
class StepResult:
    """The base of every step's result."""

    def text(self) -> str:
        """What the terminal shows."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The result as JSON values."""
        return plain(self)

    @property
    def exit_code(self) -> int:
        """0: done; 1: done, and what it checked failed (see the reference's exit codes)."""
        return 0


def format_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """`rows` as a text table with a header, as the terminal shows it."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    return console.file.getvalue().rstrip("\n")
