"""Device strings (`cpu`, `auto`, `gpu`, `gpu:N`, `gpu:N,M,...`) and how they map onto CUDA devices.

A GPU number is an index into the devices this process sees: when a scheduler (SLURM, Kubernetes,
`docker --gpus`) already set CUDA_VISIBLE_DEVICES, `gpu:1` is its second entry. The processes that
torchrun starts see only their own devices, renumbered from 0, so they never map the numbers again.
Torch-free: the CLI parses devices before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.core.errors import ParamsError


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # "cpu", "auto" or "cuda"
    ids: tuple[int, ...] = ()  # indices into the visible CUDA devices


def parse_device(spec: str, key: str, several: bool = True) -> DeviceSpec:
    """Parse a device string; `several` allows auto and gpu:N,M (training). Errors name the key and the fix."""
    text = spec.strip()
    if text == "cpu" or (text == "auto" and several):
        return DeviceSpec(text)
    if text == "gpu":
        return DeviceSpec("cuda", (0,))
    lower = text.lower()
    if lower != text and (lower in ("cpu", "auto", "gpu") or lower.startswith("gpu:")):
        raise ParamsError(f"{key}={spec!r}: device names are lower case; write -o {key}={lower}")
    if lower.startswith("cuda"):
        fix = "gpu" + lower[4:] if lower[4:].startswith(":") else "gpu"
        raise ParamsError(f"{key}={spec!r}: sortflow calls CUDA devices gpu; write -o {key}={fix}")
    if text.startswith("gpu:"):
        parts = text[4:].split(",")
        if not all(p.strip().isdigit() for p in parts):
            raise ParamsError(f"{key}={spec!r}: expected gpu:N or gpu:N,M,... with GPU numbers 0, 1, ...")
        ids = tuple(int(p) for p in parts)
        if len(set(ids)) != len(ids):
            raise ParamsError(f"{key}={spec!r}: a GPU is named twice; name each once, e.g. gpu:0,1")
        if len(ids) > 1 and not several:
            raise ParamsError(f"{key}={spec!r}: this runs on one device; choose one, e.g. -o {key}=gpu:{ids[0]}")
        return DeviceSpec("cuda", ids)
    forms = "cpu, auto, gpu, gpu:N or gpu:N,M,..." if several else "cpu, gpu or gpu:N"
    raise ParamsError(f"{key}={spec!r}: expected {forms}")


def visible_devices(ids: tuple[int, ...], visible: str | None, count: int, key: str) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries for GPU numbers `ids`: mapped through an existing list (ids, UUIDs or
    MIG names), else the numbers themselves. `count` is how many devices this process sees."""
    entries = [e.strip() for e in visible.split(",") if e.strip()] if visible else [str(i) for i in range(count)]
    entries = entries[:count]  # CUDA ignores the entries after the first invalid one
    missing = [i for i in ids if i >= len(entries)]
    if missing:
        seen = f"CUDA_VISIBLE_DEVICES={visible}: " if visible else ""
        raise ParamsError(
            f"{key}: GPU {missing} not found; this machine shows {len(entries)} ({seen}numbered 0 to "
            f"{len(entries) - 1}); choose among those"
        )
    return [entries[i] for i in ids]
