"""Where the model looked: class-activation heatmaps over images (Grad-CAM, from the `grad-cam` package).

Grad-CAM weighs the feature maps of a layer by the mean gradient of a class's logit with respect to each map,
sums them and keeps the positive part: the regions that raise that class's score. The layer is the last one
whose output is still a spatial map (found by a forward pass, so it suits any timm model of the zoo); the
images are prepared as in evaluation (resized and centre-cropped), and the map is laid over that crop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.model.deployable import Deployable, deployable_from_checkpoint

BATCH = 16


class _Logits(nn.Module):
    """Raw 0-255 pixels in, logits out: what Grad-CAM differentiates."""

    def __init__(self, model: Deployable) -> None:
        super().__init__()
        self.deployable = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.deployable.logits(image)


def last_spatial_layer(model: nn.Module, size: int) -> nn.Module:
    """The last module, in the order a forward pass runs them, whose output is a map of more than one position."""
    order: list[nn.Module] = []

    def hook(module: nn.Module, _: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
            order.append(module)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return order[-1]


class Heatmaps:
    """Grad-CAM of one model (a checkpoint or export's model.pt): `maps` gives each image's heatmap in [0, 1]."""

    def __init__(self, ckpt: dict[str, Any]) -> None:
        from pytorch_grad_cam import GradCAM

        from components.data.loader import DataConfig, transform

        self.config = DataConfig(**ckpt["data_config"])
        self.transform = transform(self.config, training=False, normalize=False)
        self.model = _Logits(deployable_from_checkpoint(ckpt)).eval()
        layer = last_spatial_layer(self.model, self.config.image_size)
        self.cam = GradCAM(model=self.model, target_layers=[layer])

    def pixels(self, path: Path) -> np.ndarray:
        """An image as the model takes it: [3, size, size], 0-255 float."""
        from components.data.loader import prepared

        return prepared(path, self.transform).numpy()

    def maps(self, pixels: np.ndarray, classes: list[int]) -> np.ndarray:
        """[n, size, size] heatmaps in [0, 1] of `pixels` [n, 3, size, size] for each image's class."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        found = []
        for start in range(0, len(pixels), BATCH):
            batch = torch.from_numpy(pixels[start : start + BATCH])
            targets = [ClassifierOutputTarget(int(c)) for c in classes[start : start + BATCH]]
            found.append(self.cam(input_tensor=batch, targets=targets))
        return np.concatenate(found) if found else np.empty((0, self.config.image_size, self.config.image_size))


def overlay(pixels: np.ndarray, heatmap: np.ndarray, path: Path) -> None:
    """Write the image (`pixels` [3, H, W], 0-255) with its heatmap laid over it in colour, as PNG."""
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.clip(pixels.transpose(1, 2, 0) / 255.0, 0, 1).astype(np.float32)
    Image.fromarray(show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=0.55)).save(path, format="PNG")

