"""sortflow checkpoints: what `last.pt`/`best.pt` hold, how they are written, loaded and checked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.core.errors import InputError
from components.core.fsutil import atomic_write_bytes

LAST, BEST = "last.pt", "best.pt"
CHECKPOINT_KEYS = ("model", "model_name", "timm_name", "num_classes", "label_names", "data_config")


def weights_path(weight_path: str, train_output: str) -> Path:
    """`evaluate.weight_path`/`export.weight_path`, or when empty `best.pt` in `train.output`."""
    return Path(weight_path) if weight_path else Path(train_output) / BEST


def load_checkpoint(path: str | Path, setting: str = "evaluate.weight_path") -> dict[str, Any]:
    """A sortflow checkpoint, loaded with weights_only=True (no pickled code runs).

    `setting` is the parameter that names the file, for the error message when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; train first or set {setting}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise InputError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise InputError(f"{path}: not a sortflow checkpoint (missing {', '.join(missing)})")
    return ckpt


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename, so an interrupted run always leaves a loadable checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The checkpoint's model with its weights, in eval mode."""
    from components.model.zoo import create_model, get_spec

    model = create_model(get_spec(ckpt["timm_name"]), ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def check_classes(ckpt: dict[str, Any], classes: list[str], path: Path, label_file: Path, fix: str) -> None:
    """The checkpoint was trained on exactly these classes, in this order; else an error that ends in `fix`."""
    if ckpt["label_names"] != classes:
        raise InputError(
            f"{path}: trained on {ckpt['num_classes']} classes ({', '.join(ckpt['label_names'][:5])}...), "
            f"but {label_file} has {len(classes)} ({', '.join(classes[:5])}...); {fix}"
        )


def check_resumable(ckpt: dict[str, Any], timm_name: str, model_name: str, classes: list[str], path: Path) -> None:
    """A run can continue from this checkpoint: the same model and the same classes."""
    if ckpt["timm_name"] != timm_name:
        raise InputError(
            f"{path}: a checkpoint of {ckpt['model_name']} ({ckpt['timm_name']}), but train.model is "
            f"{model_name} ({timm_name}); use the same model or another train.output"
        )
    check_classes(ckpt, classes, path, Path("label.txt"), "use another train.output")
