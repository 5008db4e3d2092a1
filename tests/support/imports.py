"""The import graph of `components/`, read from the source: module names are dotted paths under
`components` ("steps.train"), Triton's model files aside."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "components"


def module_path(name: str) -> Path:
    return COMPONENTS.joinpath(*name.split(".")).with_suffix(".py")


def modules() -> dict[str, ast.Module]:
    """Every library module by dotted name, parsed."""
    return {
        ".".join(p.relative_to(COMPONENTS).with_suffix("").parts): ast.parse(p.read_text())
        for p in sorted(COMPONENTS.rglob("*.py"))
        if p.name != "__init__.py" and "triton_models" not in p.parts
    }


def imports(tree: ast.Module, triton_models: bool = False) -> set[str]:
    """`components` modules that `tree` imports anywhere, lazily or not (Triton's model files only when asked:
    they are no layer of the library, but the library may use one, as export uses `triton_models.novelty`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("components"):
            package = node.module.removeprefix("components").lstrip(".")
            if package.count(".") == 1 or package == "cli":
                found.add(package)
            else:  # `from components.steps import serve`
                found |= {f"{package}.{a.name}".lstrip(".") for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("components.") for a in node.names if a.name.startswith("components.")}
    return {name for name in found if triton_models or not name.startswith("triton_models")}


def closure(name: str) -> set[str]:
    """`name` and every module it imports, at any depth."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += imports(ast.parse(module_path(current).read_text()), triton_models=True)
    return seen
