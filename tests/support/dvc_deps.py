"""The code deps of each stage of dvc.yaml, from the imports of its step: `python -m tests.support.dvc_deps`
rewrites them in place (tests/orchestration/test_dvc_pipeline.py fails while they are stale)."""

from __future__ import annotations

import re

from tests.support.imports import ROOT, closure, module_path

# Modules every command runs but whose changes cannot change a result (see the comment in dvc.yaml).
NOT_DEPS = {"cli", "core.config", "core.errors"}
_DEP = re.compile(r"^      - components/.*\.py$")


def stage_code(stage: str) -> list[str]:
    """The library files that `sortflow <stage>` imports, at any depth, as dvc.yaml lists them."""
    return sorted(str(module_path(m).relative_to(ROOT)) for m in closure(f"steps.{stage}") - NOT_DEPS)


def rewrite(text: str) -> str:
    """`text` (dvc.yaml) with each stage's run of `- components/...py` lines replaced by its current deps."""
    out, stage, lines, i = [], "", text.splitlines(keepends=True), 0
    while i < len(lines):
        if match := re.match(r"^  (\w+):\s*$", lines[i]):
            stage = match.group(1)
        if _DEP.match(lines[i]):
            while i < len(lines) and _DEP.match(lines[i]):
                i += 1
            out += [f"      - {dep}\n" for dep in stage_code(stage)]
            continue
        out.append(lines[i])
        i += 1
    return "".join(out)


if __name__ == "__main__":
    path = ROOT / "dvc.yaml"
    path.write_text(rewrite(path.read_text()))
    print(f"rewrote the code deps in {path}")
