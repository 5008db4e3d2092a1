"""The container image and deployment files, checked as far as a machine without a container runtime allows:
each passes its real linter (hadolint, compose-spec, kubernetes-validate, yamllint), and every command, port,
path and parameter they name exists in sortflow."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.cli import build_parser
from components.core.config import Params
from components.model.deployable import OPSET

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "deploy" / "triton.Dockerfile"]
COMPOSE = ROOT / "deploy" / "compose.yaml"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
WORKDIR = "/opt/sortflow"
# The Triton release the files pin, and the newest ONNX opset its onnxruntime backend (ONNX Runtime 1.19) runs.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
TRITON_MAX_OPSET = 21
PORTS = {"mlflow": 5000, "prefect": 4200}


def _lint(*command: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True)


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution (${VAR}, ${VAR:-default}, ${VAR:?error}), as `docker compose` does it
    before it validates the file."""

    def value(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        assert op != ":?", f"{COMPOSE.name} needs {name}: {arg}"
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, text)


def _compose() -> dict:
    return yaml.safe_load(_interpolate(COMPOSE.read_text(), {"POSTGRES_PASSWORD": "secret"}))


def _containers() -> list[dict]:
    docs = [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text())]
    return [c for d in docs if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]]


def test_dockerfiles_pass_hadolint() -> None:
    linted = _lint(BIN / "hadolint", "--config", ROOT / ".hadolint.yaml", *DOCKERFILES)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_compose_file_is_a_valid_compose_specification() -> None:
    import compose_spec

    # compose-spec validates a resolved file: YAML anchors merged and variables substituted, as compose does.
    stack = compose_spec.PyCompose.from_json(json.dumps(_compose()))
    assert {"postgres", "mlflow", "prefect-server", "worker", "triton"} <= set(_compose()["services"])
    assert len(stack) == 5


def test_kubernetes_manifests_pass_strict_validation() -> None:
    validated = _lint(BIN / "kubernetes-validate", "--strict", *MANIFESTS)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_deployment_yaml_passes_yamllint() -> None:
    linted = _lint(BIN / "yamllint", "--strict", "-c", ROOT / ".yamllint.yaml", COMPOSE, *MANIFESTS)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_linters_reject_broken_files(tmp_path: Path) -> None:
    """Each linter is strict enough to catch a typo, so that their passing means something."""
    import compose_spec

    (tmp_path / "Dockerfile").write_text("FROM python:latest\nRUN cd /tmp && pip install torch\n")
    assert _lint(BIN / "hadolint", "--config", ROOT / ".hadolint.yaml", tmp_path / "Dockerfile").returncode != 0
    with pytest.raises(ValueError, match="portz"):
        compose_spec.PyCompose.from_yaml("services:\n  a:\n    image: x\n    portz: ['1:1']\n")
    broken = MANIFESTS[0].read_text().replace("replicas:", "replicaz:")
    (tmp_path / "broken.yaml").write_text(broken)
    assert _lint(BIN / "kubernetes-validate", "--strict", tmp_path / "broken.yaml").returncode != 0


def _sortflow_commands() -> list[list[str]]:
    """Every `sortflow ...` command line that the compose file and the manifests run."""
    texts = [json.dumps(_compose()), *(json.dumps(c) for c in _containers())]
    found = [m for text in texts for m in re.findall(r"sortflow [a-z][^&\"\\]*", text)]
    return [shlex.split(line)[1:] for line in found]


def test_every_sortflow_command_in_the_files_parses() -> None:
    commands = _sortflow_commands()
    assert ["deploy", "--work-pool", "sortflow"] in commands
    parser = build_parser()
    for command in commands:
        parser.parse_args(command)  # an unknown command or option exits with 2 and fails the test


def test_ports_paths_and_images_agree_with_sortflow() -> None:
    params, stack = Params(), _compose()["services"]
    triton = next(c for c in _containers() if c["name"] == "triton")
    served = {params.serve.http_port, params.serve.grpc_port, params.serve.metrics_port}
    assert {p["containerPort"] for p in triton["ports"]} == served
    assert {int(p.split(":")[1]) for p in stack["triton"]["ports"]} == served
    assert stack["mlflow"]["ports"] == [f"{PORTS['mlflow']}:{PORTS['mlflow']}"]
    assert stack["prefect-server"]["ports"] == [f"{PORTS['prefect']}:{PORTS['prefect']}"]
    env = yaml.safe_load(MANIFESTS[-1].read_text().split("---")[0])["data"]
    assert (
        env
        == stack["worker"]["environment"]
        == {
            "PREFECT_API_URL": f"http://prefect-server:{PORTS['prefect']}/api",
            "MLFLOW_TRACKING_URI": f"http://mlflow:{PORTS['mlflow']}",
        }
    )
    # The worker publishes into the volume Triton serves: the image's working directory + publish.repo.
    assert f"WORKDIR {WORKDIR}" in DOCKERFILES[0].read_text()
    repo = f"{WORKDIR}/{params.publish.repo}"
    assert (
        f"triton-repo:{repo}" in stack["worker"]["volumes"] and "triton-repo:/models:ro" in stack["triton"]["volumes"]
    )
    worker = next(c for c in _containers() if c["name"] == "worker")
    assert {"name": "triton-repo", "mountPath": repo} in worker["volumeMounts"]
    assert all(o.startswith("output/") for o in (params.train.output, params.evaluate.output, params.export.output))
    for command in (stack["triton"]["command"], triton["args"]):
        assert "--model-repository=/models" in command
    assert (ROOT / "deploy/postgres/init.sql").is_file()


def test_copied_paths_exist() -> None:
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
                assert all((ROOT / s).exists() for s in sources), line


def test_triton_image_is_pinned_to_a_release_that_runs_the_exported_opset() -> None:
    assert f"FROM {TRITON_IMAGE}\n" in DOCKERFILES[1].read_text()
    assert OPSET <= TRITON_MAX_OPSET
    # What the python-backend model imports beyond the standard library is installed into that image.
    needed = set()
    for path in (ROOT / "components/triton_models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                needed |= {n.split(".")[0] for n in names}
    local = {p.stem for p in (ROOT / "components/triton_models").glob("*.py")}
    third_party = needed - set(sys.stdlib_module_names) - local - {"__future__", "triton_python_backend_utils"}
    # onnxruntime: the runner and <model>_bytes' session; threadpoolctl: numpy's BLAS in one thread
    assert third_party == {"numpy", "PIL", "onnxruntime", "threadpoolctl"}
    installed = DOCKERFILES[1].read_text()
    assert '"numpy==' in installed and '"pillow==' in installed and '"onnxruntime==' in installed
    assert '"threadpoolctl==' in installed
