"""The team stack in real containers, with Podman: the images built from the committed Dockerfiles, the demo
pipeline inside the pipeline image, `deploy/compose.yaml` up with podman-compose and used from the host as a team
member would, and the Kubernetes manifests played as pods. Public base images are played by local stand-ins
(tests/containers/images, README "From one machine to a team"). One module, so that each image is built once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.helpers import write_image
from tests.support.podman import (
    DEBIAN,
    FREE_DISK_GB,
    PIPELINE_IMAGE,
    ROOT,
    TRITON_IMAGE,
    Podman,
    build_images,
    debian_base,
    free_disk_gb,
    unusable,
)
from tests.support.project import MODEL
from tests.support.services import sh, wait_for_flow_run

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1500)]

COMPOSE = ["-f", str(ROOT / "deploy/compose.yaml"), "-f", str(ROOT / "tests/containers/compose.override.yaml")]
PREFECT_API, MLFLOW, TRITON_HTTP, TRITON_GRPC = (
    "http://127.0.0.1:4200/api",
    "http://127.0.0.1:5000",
    "http://127.0.0.1:8000",
    "127.0.0.1:8001",
)
USER = 1000  # the Dockerfile's user: what it writes on volumes and bind mounts
# `python -m bench.bench_containers` sets this to collect the build times, sizes and start-up times.
FIGURES = os.environ.get("SORTFLOW_CONTAINER_FIGURES")


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """Podman with its own storage, the stand-ins and the project's images built; all removed afterwards."""
    tool = Podman(tmp_path_factory.mktemp("podman"))
    tool.setup()
    reason = unusable(tool)
    if reason:
        pytest.skip(reason)
    free = free_disk_gb(tool.home)
    assert free >= FREE_DISK_GB, f"{free:.0f} GB free under {tool.home}: the images need {FREE_DISK_GB} GB; free some"
    try:
        debian_base(tool)
        code, printed = tool.status("run", "--rm", DEBIAN, "true")
        if code:
            pytest.skip(f"podman cannot start a container here: {printed[-400:]}")
        build_images(tool)
        yield tool
    finally:
        if FIGURES:
            built = [tag for tag in (PIPELINE_IMAGE, TRITON_IMAGE) if not tool.status("image", "exists", tag)[0]]
            sizes = {tag: tool.size(tag) for tag in built}
            Path(FIGURES).write_text(json.dumps({"timings": tool.timings, "sizes": sizes}, indent=1))
        tool.reset()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Host folders that containers write as user 1000: the DVC remote and the published model repository."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("dvc-remote", "published")}
    for folder in folders.values():
        os.chown(folder, USER, USER)
    return folders


def test_the_pipeline_image_runs_as_user_1000_with_the_project_and_its_history(podman: Podman) -> None:
    printed = podman.run(
        "run", "--rm", PIPELINE_IMAGE, "sh", "-c",
        "id -u; sortflow --help >/dev/null && echo help-ok; touch output/w triton_repo/w && echo writable; "
        "git rev-parse HEAD; dvc version >/dev/null && echo dvc-ok; git status --porcelain --untracked-files=no",
    )  # fmt: skip
    uid, help_ok, writable, head, dvc_ok, *changed = printed.splitlines()
    assert (uid, help_ok, writable, dvc_ok) == (str(USER), "help-ok", "writable", "dvc-ok"), printed
    assert head == sh(["git", "rev-parse", "HEAD"], ROOT).strip()  # the history is there for DVC and lineage
    # The checkout is the build context's: no tracked file left out by .dockerignore (MLflow tags runs with it).
    assert changed == sh(["git", "status", "--porcelain", "--untracked-files=no"], ROOT).splitlines()


# params.yaml edited as a DVC user changes a parameter before `dvc repro` (one epoch: the image is under test,
# not the model; `dvc exp run -S` would stash the workspace, which cannot move the bind-mounted triton_repo/).
ONE_EPOCH = (
    "python -c \"import pathlib, yaml; p = pathlib.Path('params.yaml'); d = yaml.safe_load(p.read_text()); "
    "d['train']['epochs'] = 1; p.write_text(yaml.safe_dump(d, sort_keys=False))\""
)


def test_the_demo_pipeline_runs_inside_the_image_to_a_published_model(podman: Podman, shared: dict[str, Path]) -> None:
    """`make demo`'s pipeline, for one epoch: the demo data, `dvc repro` to a registered and published model, and
    `dvc push` to the project's local remote (the one compose.yaml's worker pulls from in the next test)."""
    start = time.monotonic()
    printed = podman.run(
        "run", "--rm",
        f"--volume={shared['dvc-remote']}:/opt/sortflow-dvc-remote",
        f"--volume={shared['published']}:/opt/sortflow/triton_repo",
        PIPELINE_IMAGE, "sh", "-c",
        f"sortflow dataset demo data && {ONE_EPOCH} && dvc repro && dvc push && sortflow summary",
        timeout=900,
    )  # fmt: skip
    podman.timings["dvc repro of the demo inside the image"] = time.monotonic() - start
    assert "epoch 1/1" in printed, printed[-3000:]
    assert "| registry | version 1: " in printed and "champion" in printed, printed[-3000:]
    assert list((shared["published"] / MODEL).glob("1/model.onnx")), printed[-3000:]
    # The demo data made in the image is the version that data.dvc names, now in the remote.
    digest = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    assert (shared["dvc-remote"] / "files" / "md5" / digest[:2] / digest[2:]).is_file(), printed[-3000:]


def _wait(what: str, ready: Callable[[], bool], timeout: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} not ready after {timeout:.0f} s:\n{logs()}"
        time.sleep(2)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _compose(podman: Podman, *args: str, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "podman-compose"), *COMPOSE, *args],  # from the dev extras
        cwd=ROOT, env={**podman.env, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"podman-compose {' '.join(args)} exited with {done.returncode}:\n{output[-6000:]}"
    return output


def _logs(podman: Podman) -> str:
    names = podman.run("ps", "--all", "--format", "{{.Names}}", check=False).split()
    return "\n".join(f"--- {n}\n{podman.run('logs', '--tail', '40', n, check=False)}" for n in names)


def test_the_compose_stack_trains_registers_and_serves(
    podman: Podman, shared: dict[str, Path], tmp_path: Path
) -> None:
    """deploy/compose.yaml up; from the host: trigger training-pipeline/nightly, see it Completed, the run and
    the registered version in MLflow, and a prediction through Triton's gRPC port; then down, nothing left."""
    env = {
        "POSTGRES_PASSWORD": "container-test",
        "SORTFLOW_IMAGE": PIPELINE_IMAGE,
        "SORTFLOW_TRITON_IMAGE": TRITON_IMAGE,
        "SORTFLOW_DVC_REMOTE": str(shared["dvc-remote"]),
    }
    start = time.monotonic()
    _compose(podman, "up", "-d", env=env)
    try:
        logs = lambda: _logs(podman)  # noqa: E731
        for url in (f"{MLFLOW}/health", f"{PREFECT_API}/health", f"{TRITON_HTTP}/v2/health/ready"):
            _wait(url, lambda u=url: _answers(u), 180, logs)
        nightly = f"{PREFECT_API}/deployments/name/training-pipeline/nightly"
        _wait("the worker's deployments", lambda: _answers(nightly), 180, logs)
        podman.timings["compose up until every service answers"] = time.monotonic() - start
        assert _answers(PREFECT_API.removesuffix("/api") + "/"), "the Prefect server does not serve its UI"

        start = time.monotonic()
        # One epoch, with the flow's own parameter for -o overrides, as a team member would try a change.
        one_epoch = json.dumps({"overrides": {"train.epochs": 1}})
        trigger = ["prefect", "deployment", "run", "training-pipeline/nightly", "--params", one_epoch]
        triggered = sh(trigger, tmp_path, PREFECT_API_URL=PREFECT_API)
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered).group(1)
        state = wait_for_flow_run(PREFECT_API, run_id, logs)
        assert state["type"] == "COMPLETED", f"{state}\n{logs()}"
        podman.timings["training-pipeline/nightly, 1 epoch, triggered to Completed"] = time.monotonic() - start

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=MLFLOW, registry_uri=MLFLOW)
        champion = client.get_model_version_by_alias(MODEL, "champion")  # registered and promoted by the run
        run = client.get_run(champion.run_id)
        assert (run.info.status, run.data.params["train.epochs"]) == ("FINISHED", "1")  # the override reached it

        ready = f"{TRITON_HTTP}/v2/models/{MODEL}_bytes/ready"
        _wait("Triton loading the published model", lambda: _answers(ready), 120, logs)
        image = write_image(tmp_path / "item.png", seed=3, size=64)
        printed = sh(["sortflow", "predict", "--triton", TRITON_GRPC, "--topk", "1", "--input", str(image)], tmp_path)
        assert '"label_names"' in printed and '"decision"' in printed, printed
    finally:
        _compose(podman, "down", "--volumes", env=env)
    assert podman.left() == {"containers": [], "pods": [], "volumes": []}


def _in_pod(podman: Podman, container: str, url: str) -> bool:
    """Whether `url` answers 200 inside the network of `container`'s pod (the pods have addresses of their own)."""
    probe = f"import urllib.request as r; r.urlopen({url!r}, timeout=5)"
    return podman.status("exec", container, "python3", "-c", probe, timeout=60)[0] == 0


def test_the_kubernetes_manifests_run_as_pods(podman: Podman, shared: dict[str, Path], tmp_path: Path) -> None:
    """deploy/kubernetes/ played by `podman kube play` as they are (bridge networking): Triton serves the model
    repository in the claim's volume, and the worker pod runs as user 1000 with the servers' URLs from the
    ConfigMap. The images carry the names the manifests use."""
    manifests = {p.stem: p for p in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))}
    for image in (PIPELINE_IMAGE, TRITON_IMAGE):
        podman.run("tag", image, image.replace("localhost/", "registry.example.com/").replace(":test", ":1.0"))
    repo = tmp_path / "repo.tar"
    with tarfile.open(repo, "w") as tar:
        tar.add(shared["published"], arcname=".")
    try:
        start = time.monotonic()
        podman.run("kube", "play", str(manifests["triton"]))  # the claim becomes the volume sortflow-triton-repo
        podman.run("volume", "import", "sortflow-triton-repo", str(repo))  # what the worker would publish
        triton, logs = "triton-pod-0-triton", lambda: _logs(podman)
        ready = f"http://127.0.0.1:8000/v2/models/{MODEL}_bytes/ready"
        _wait("Triton's pod serving the published model", lambda: _in_pod(podman, triton, ready), 120, logs)
        podman.timings["kube play until Triton serves the published model"] = time.monotonic() - start
        podman.run("kube", "play", str(manifests["worker"]))
        worker = "sortflow-worker-pod-0-worker"
        env = podman.run("inspect", "--format", "{{json .Config.Env}}", worker)
        assert "PREFECT_API_URL=http://prefect-server:4200/api" in env, env
        assert "MLFLOW_TRACKING_URI=http://mlflow:5000" in env, env
        assert podman.run("inspect", "--format", "{{.Config.User}}", worker).strip() == str(USER)
    finally:
        for name in ("worker", "triton"):
            podman.run("kube", "down", str(manifests[name]), check=False)
        podman.run("volume", "rm", "--force", "sortflow-triton-repo", check=False)  # a claim outlives its pods
    assert podman.left() == {"containers": [], "pods": [], "volumes": []}
