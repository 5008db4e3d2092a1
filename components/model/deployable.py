"""The model as it is deployed: raw 0-255 RGB pixels in, class probabilities out, written as ONNX.

The graph's input is `image`, float32 [batch, 3, H, W], RGB pixel values 0-255, already resized and
center-cropped as in evaluation (so any client can feed decoded pixels); normalization by the model's
mean and std happens inside the graph. The output is `probabilities`, float32 [batch, num_classes]: the
softmax of the logits divided by the temperature that evaluate fitted, so every confidence served is the
calibrated one (the predicted class is the same at any temperature).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.model.checkpoints import model_from_checkpoint
from components.model.contract import INPUT_NAME, OUTPUT_NAME

OPSET = 17


class Deployable(nn.Module):
    """Raw 0-255 RGB in, class probabilities out: the model with its preprocessing and calibrated softmax."""

    def __init__(
        self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1 / (255 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", -torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("inverse_temperature", torch.tensor(1 / temperature))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """The model's logits for raw 0-255 RGB pixels (before the temperature)."""
        return self.model(image * self.scale + self.shift)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (self.logits(image) * self.inverse_temperature).softmax(dim=1)


def deployable_from_checkpoint(ckpt: dict[str, Any], temperature: float = 1.0) -> Deployable:
    """A checkpoint's model with its own mean and std inside and the given temperature, in eval mode."""
    cfg = ckpt["data_config"]
    return Deployable(model_from_checkpoint(ckpt), tuple(cfg["mean"]), tuple(cfg["std"]), temperature).eval()


def export_onnx(model: Deployable, size: int, path: Path) -> None:
    """Write `model` as ONNX (opset 17, dynamic batch axis) and check the file with onnx's checker."""
    import onnx

    example = torch.rand(2, 3, size, size) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
