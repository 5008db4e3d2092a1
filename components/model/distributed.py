"""Training on several processes: each process's place (rank, world), the torchrun command that starts one
per GPU, this process's device, the process group, and the collectives the loop needs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from components.core.devices import parse_device, visible_devices
from components.core.errors import ParamsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )


def resolve_device(spec: str) -> tuple[str, list[int]]:
    """`cpu`, `auto`, `gpu`, `gpu:0` or `gpu:0,1,2,3` -> ("cpu" or "cuda", GPU numbers among the visible ones)."""
    device = parse_device(spec, "train.device")
    if device.kind == "cpu":
        return "cpu", []
    if device.kind == "auto":
        if torch.cuda.is_available():
            return "cuda", [0]
        log.warning("train.device=auto: no CUDA device found, training on the CPU")
        return "cpu", []
    if not torch.cuda.is_available():
        raise ParamsError(
            f"train.device={spec}: no CUDA device is available (torch {torch.__version__}); "
            "use -o train.device=cpu, or -o train.device=auto to fall back to the CPU"
        )
    visible_devices(device.ids, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), "train.device")
    return "cuda", list(device.ids)


def torchrun_command(gpu_ids: list[int], argv: list[str], log_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command that runs `sortflow ARGV` as one DDP process per GPU, each seeing only its own GPU (mapped
    through a CUDA_VISIBLE_DEVICES that a scheduler set), with its output kept under `log_dir`."""
    visible = visible_devices(
        tuple(gpu_ids), os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), "train.device"
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={len(gpu_ids)}",
        f"--log-dir={log_dir}",
        "--redirects=3",
        "--tee=3",
        "-m",
        "components.cli",
        *argv,
    ]
    return command, {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(visible)}


def rank_failure(log_dir: Path) -> str:
    """The end of the first failing rank's own output (torchrun keeps one stderr.log per rank)."""
    logs = sorted(log_dir.rglob("stderr.log"), key=lambda p: p.stat().st_mtime)
    for path in logs:
        text = path.read_text(errors="replace")
        if "Traceback" in text or "error:" in text:
            rank = path.parent.name
            return f"rank {rank} ({path}):\n" + "\n".join(text.splitlines()[-20:])
    return f"no rank left a traceback under {log_dir}"


def all_sum(values: list[float], dist: Dist, device: torch.device) -> list[float]:
    """`values` summed over every rank (as they are on one process)."""
    if dist.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def nonfinite_ranks(loss: torch.Tensor, dist: Dist, device: torch.device) -> list[int]:
    """The ranks whose loss is NaN or infinite, known to every rank (so all stop together, none waits)."""
    bad = torch.zeros(dist.world, dtype=torch.float32, device=device)
    bad[dist.rank] = float(not torch.isfinite(loss.detach()).item())
    if dist.world > 1:
        torch.distributed.all_reduce(bad)
    return [rank for rank, flag in enumerate(bad.tolist()) if flag]


def process_device(spec: str, dist: Dist) -> torch.device:
    """This process's device. A rank under torchrun sees only its own GPUs, numbered from 0, so it takes
    cuda:LOCAL_RANK (the launcher mapped train.device already) and makes it current for NCCL."""
    if dist.world == 1:
        kind, gpu_ids = resolve_device(spec)
        return torch.device("cuda", gpu_ids[0]) if kind == "cuda" else torch.device("cpu")
    if parse_device(spec, "train.device").kind == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if dist.local_rank >= torch.cuda.device_count():
        raise ParamsError(
            f"rank {dist.rank} (local rank {dist.local_rank}) sees only {torch.cuda.device_count()} GPUs; "
            "start one process per GPU (torchrun --nproc-per-node)"
        )
    device = torch.device("cuda", dist.local_rank)
    torch.cuda.set_device(device)  # else every rank's first collective runs on cuda:0 ("Duplicate GPU")
    return device


@contextlib.contextmanager
def process_group(dist: Dist, device: torch.device) -> Iterator[None]:
    """The process group of a run on several processes (NCCL on GPUs, gloo on CPUs); nothing for one."""
    if dist.world == 1:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
