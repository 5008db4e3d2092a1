"""The shape of `components/`: packages by layer, short functions, no import cycles, steps that do not import
each other, and a layout page that names every module."""

from __future__ import annotations

import ast
import re

from tests.support.imports import COMPONENTS, ROOT, imports, modules

MAX_LINES = 80
# Declarative tables, allowed to be long: the GX expectation list.
TABLES = {("data.expectations", "_expectations")}
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py"}
ENTRY = {"cli", "__main__"}  # the entry points, above every layer
HELPERS = ("data", "model", "traffic", "integrations", "serving")
# What each layer may import: steps use helpers and the base, helpers each other and the base, the base itself.
MAY_IMPORT = {"steps": {*HELPERS, "core"}, **{h: {*HELPERS, "core"} for h in HELPERS}, "core": {"core"}}


def _layer(name: str) -> str:
    return name.split(".")[0]


def test_components_has_only_the_entry_point_at_its_top() -> None:
    loose = {p.name for p in COMPONENTS.glob("*.py")} - TOP_LEVEL
    assert loose == set(), "modules outside a package"
    packages = {p.name for p in COMPONENTS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages == {"steps", "core", "triton_models", *HELPERS}
    assert all((COMPONENTS / p / "__init__.py").is_file() for p in packages)


def test_no_function_is_longer_than_a_screen() -> None:
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_LINES
        and (name, node.name) not in TABLES
    ]
    assert long == []


def test_modules_form_layers_without_cycles() -> None:
    graph = {name: imports(tree) for name, tree in modules().items()}
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


def test_each_layer_imports_only_what_is_below_it() -> None:
    """A step never imports another step (nor the CLI): what two steps share lives in a helper. Helpers never
    import steps, and the base imports only the base."""
    graph = {name: imports(tree) for name, tree in modules().items() if name not in ENTRY}
    crossing = {
        name: sorted(dep for dep in deps if _layer(dep) not in MAY_IMPORT[_layer(name)])
        for name, deps in graph.items()
    }
    assert {name: deps for name, deps in crossing.items() if deps} == {}


def test_triton_model_files_import_nothing_from_sortflow() -> None:
    for path in (COMPONENTS / "triton_models").glob("*.py"):
        assert "components" not in path.read_text(), path.name


def test_layout_page_names_every_module() -> None:
    page = (ROOT / "docs/development/layout.md").read_text()
    named = set(re.findall(r"`([\w/]+)\.py`", page))
    paths = {name.replace(".", "/") for name in modules()}
    paths |= {f"triton_models/{p.stem}" for p in (COMPONENTS / "triton_models").glob("*.py")} | ENTRY
    assert paths - {"triton_models/__init__"} - named == set(), "paths the layout does not name"
    assert {n for n in named if n.split("/")[0] in MAY_IMPORT or n.startswith("triton_models")} <= paths
