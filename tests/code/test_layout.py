"""The shape of `components/`: short functions, layers without cycles, steps that do not import each other,
and a README map that names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "components"
MAX_LINES = 80
# Declarative tables, allowed to be long: the GX expectation list.
TABLES = {("dataset_checks", "_expectations")}
STEPS = {
    "check_dataset",
    "split",
    "convert",
    "demo_data",
    "train",
    "evaluate",
    "export",
    "register",
    "publish",
    "serve",
    "predict",
    "summary",
    "monitor",
    "review",
    "add_reviewed",
    "promote",
    "bench_serve",
}
ENTRY = {"cli"}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(COMPONENTS.glob("*.py")) if p.stem != "__init__"}


def _imports(tree: ast.Module) -> set[str]:
    """`components` modules imported anywhere in the module, lazily or not."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("components"):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("components.")}
    return found - {"triton_models"}


def test_no_function_is_longer_than_a_screen() -> None:
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_LINES
        and (name, node.name) not in TABLES
    ]
    assert long == []


def test_modules_form_layers_without_cycles() -> None:
    graph = {name: _imports(tree) for name, tree in _modules().items()}
    assert set().union(*graph.values()) <= set(graph), "imports of modules that do not exist"
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_steps_import_only_helpers() -> None:
    """A step module never imports another step (nor the CLI): what two steps share lives in a helper."""
    graph = {name: _imports(tree) for name, tree in _modules().items()}
    assert set(graph) >= STEPS | ENTRY
    crossing = {step: sorted(graph[step] & (STEPS | ENTRY)) for step in STEPS if graph[step] & (STEPS | ENTRY)}
    assert crossing == {}
    helpers = set(graph) - STEPS - ENTRY
    upward = {h: sorted(graph[h] & (STEPS | ENTRY)) for h in helpers if graph[h] & (STEPS | ENTRY)}
    assert upward == {}


def test_readme_layout_names_every_module() -> None:
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(\w+)\.py`", section))
    assert set(_modules()) - named == set(), "modules the README's layout does not name"
    existing = {p.stem for p in COMPONENTS.rglob("*.py")}
    assert named - existing == set(), "modules the README's layout names but that do not exist"
