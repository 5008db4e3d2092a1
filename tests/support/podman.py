"""Podman for the container tests: its own configuration and storage in a temporary folder (the system's files
are never touched), the local stand-ins for the public base images, and the images built from the project's
Dockerfiles. Everything it creates lives in that storage and is removed with it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests" / "containers" / "images"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEBIAN = "localhost/sortflow-test/debian:bookworm"
# The public images the committed files name, and the local files that stand in for them.
STANDINS = {
    "docker.io/library/python:3.11-slim-bookworm": "python.Containerfile",
    "docker.io/library/postgres:18": "postgres.Containerfile",
    "nvcr.io/nvidia/tritonserver:24.10-py3": "triton.Containerfile",
}
PIPELINE_IMAGE = "localhost/sortflow:test"
TRITON_IMAGE = "localhost/sortflow-triton:test"
# What runs containers on this kind of machine: runc (crun refuses its cgroup layout), cgroupfs, no default
# ulimits (they cannot be set here), host networking (services on 127.0.0.1 ports, as in the other tests); the
# networks that `podman kube play` makes are kept with the storage, not in /etc/containers.
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
netns = "host"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
[network]
network_config_dir = "{root}/networks"
"""
STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{root}/storage"
runroot = "{root}/run"
"""
FREE_DISK_GB = 30  # the pipeline image (about 8 GB) is written twice while a layer is committed


@dataclass
class Podman:
    """`podman` with the configuration and storage under `home`."""

    home: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.home / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"),
            "TMPDIR": str(self.home / "tmp"),  # podman's layer blobs, on the storage's disk
        }

    def setup(self) -> None:
        for sub in ("storage", "run", "tmp", "networks"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.home / "containers.conf").write_text(CONTAINERS_CONF.format(root=self.home))
        (self.home / "storage.conf").write_text(STORAGE_CONF.format(root=self.home))

    def status(self, *args: str, timeout: float = 900) -> tuple[int, str]:
        """`podman ARGS`: its exit status, and its stdout and stderr together."""
        done = subprocess.run(
            ["podman", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        return done.returncode, done.stdout + done.stderr

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> str:
        """`podman ARGS`; its stdout and stderr, and the test fails with them when `check` and it fails."""
        code, output = self.status(*args, timeout=timeout)
        if check:
            assert code == 0, f"podman {' '.join(args)} exited with {code}:\n{output[-8000:]}"
        return output

    def build(self, tag: str, containerfile: Path, context: Path, timeout: float = 900) -> None:
        """`podman build` with host networking and the machine's CA bundle for pip; its time in `timings`."""
        start = time.monotonic()
        self.run(
            "build", "--network=host", f"--volume={CA_BUNDLE}:{CA_BUNDLE}:ro", "--tag", tag,
            "--file", str(containerfile), str(context), timeout=timeout,
        )  # fmt: skip
        self.timings[f"build {tag}"] = time.monotonic() - start

    def size(self, tag: str) -> int:
        """Bytes of an image, as `podman images` counts them."""
        return int(json.loads(self.run("image", "inspect", tag))[0]["Size"])

    def left(self) -> dict[str, list[str]]:
        """Containers, pods and volumes that still exist."""
        return {
            kind: self.run(*args, "--quiet").split()
            for kind, args in (("containers", ("ps", "--all")), ("pods", ("pod", "ps")), ("volumes", ("volume", "ls")))
        }

    def reset(self) -> None:
        """Remove every container, pod, volume and image of this storage, then the storage itself."""
        self.run("system", "reset", "--force", check=False, timeout=300)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.home)


def unusable(podman: Podman) -> str | None:
    """Why Podman cannot run a container here (None when it can): the reason a container test is skipped."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        return "podman and runc are not installed (`make test` installs them with apt-get, as root)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (`make test` installs it with apt-get, as root)"
    code, printed = podman.status("info", timeout=60)
    return f"podman cannot start here: {printed[-400:]}" if code else None


def debian_base(podman: Podman) -> None:
    """A minimal Debian bookworm with Python 3.11 and pip from Debian's packages, imported as DEBIAN."""
    start = time.monotonic()
    rootfs = podman.home / "tmp" / "rootfs.tar"
    done = subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase",
         "--include=python3,python3-venv,python3-pip,ca-certificates", "bookworm", str(rootfs)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"mmdebstrap could not make the Debian base:\n{done.stderr[-4000:]}"
    podman.run("import", "--quiet", str(rootfs), DEBIAN)
    rootfs.unlink()
    podman.timings[f"build {DEBIAN}"] = time.monotonic() - start


def build_images(podman: Podman) -> None:
    """The stand-ins, then the project's two images from the committed Dockerfiles, each built once. The pipeline
    image, mostly pip downloading, is built beside the others."""
    from concurrent.futures import ThreadPoolExecutor

    python, *others = STANDINS
    podman.build(python, IMAGES / STANDINS[python], IMAGES)

    def the_others() -> None:
        for tag in others:
            podman.build(tag, IMAGES / STANDINS[tag], ROOT if "triton" in STANDINS[tag] else IMAGES)
        podman.build(TRITON_IMAGE, ROOT / "deploy" / "triton.Dockerfile", ROOT)

    with ThreadPoolExecutor(2) as pool:
        builds = [pool.submit(podman.build, PIPELINE_IMAGE, ROOT / "Dockerfile", ROOT), pool.submit(the_others)]
        for build in builds:
            build.result()


def free_disk_gb(path: Path) -> float:
    """Gigabytes free on the disk that holds `path`."""
    return shutil.disk_usage(path).free / 1e9
