"""The model as it is deployed: raw 0-255 RGB pixels in, class probabilities out, written as ONNX.

The graph's input is `image`, float32 [batch, 3, H, W], RGB pixel values 0-255, already resized and
center-cropped as in evaluation (so any client can feed decoded pixels); normalization by the model's
mean and std happens inside the graph. The output is `probabilities`, float32 [batch, num_classes]: the
softmax of the logits divided by the temperature that evaluate fitted, so every confidence served is the
calibrated one (the predicted class is the same at any temperature).

The embedder is the same model with a second output, `embedding`, float32 [batch, width]: the pooled
penultimate features (the input of the classifier layer). The served graph stops there; the fixed random
projection to what a capture record stores is applied to many samples at once, off the request path
(`triton_models/novelty.py`).

The stage summary (`StageSummary`, what the dataset audit classifies with) has one output, `features`: the
model's feature maps at each of its last stages summarised by their mean and standard deviation over
positions, and the pooled penultimate features, each block unit length, side by side.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.model.checkpoints import model_from_checkpoint
from components.model.contract import EMBEDDING_NAME, FEATURES_NAME, INPUT_NAME, OUTPUT_NAME

OPSET = 17


class Deployable(nn.Module):
    """Raw 0-255 RGB in, class probabilities out: the model with its preprocessing and calibrated softmax."""

    outputs = (OUTPUT_NAME,)

    def __init__(
        self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1 / (255 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", -torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("inverse_temperature", torch.tensor(1 / temperature))

    def normalized(self, image: torch.Tensor) -> torch.Tensor:
        """Raw 0-255 RGB pixels as the network takes them: scaled by its mean and std."""
        return image * self.scale + self.shift

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """The model's logits for raw 0-255 RGB pixels (before the temperature)."""
        return self.model(self.normalized(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (self.logits(image) * self.inverse_temperature).softmax(dim=1)


class Embedder(nn.Module):
    """The deployable model with a second output: its pooled penultimate features."""

    outputs = (OUTPUT_NAME, EMBEDDING_NAME)

    def __init__(self, deployable: Deployable) -> None:
        super().__init__()
        self.deployable = deployable

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.deployable
        pooled = d.model.forward_head(d.model.forward_features(d.normalized(image)), pre_logits=True).flatten(1)
        # The classifier layer on the same pooled features: the classifier model's probabilities, pooled once.
        probabilities = (d.model.get_classifier()(pooled) * d.inverse_temperature).softmax(dim=1)
        return probabilities, pooled


STAGES = 5  # the last stages a stage summary reads (all of a CNN's in timm; a ViT's last five blocks)


class StageSummary(nn.Module):
    """The deployable model's features at several depths: for each of its last STAGES stages (timm's
    `forward_intermediates`), the mean and the standard deviation of every feature map over positions, then
    the pooled penultimate features; each block unit length, side by side. Early stages see texture and
    colour, which pooled penultimate features trained on ImageNet's objects keep little of."""

    outputs = (FEATURES_NAME,)

    def __init__(self, deployable: Deployable) -> None:
        super().__init__()
        self.deployable = deployable
        self.stages = min(STAGES, len(deployable.model.feature_info))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        model = self.deployable.model
        final, maps = model.forward_intermediates(self.deployable.normalized(image), indices=self.stages)
        means = [m.mean(dim=(2, 3)) for m in maps]
        # The spread over positions, without Bessel's correction: a 1 x 1 map has spread 0, not NaN.
        centred = [m - mu[:, :, None, None] for m, mu in zip(maps, means, strict=True)]
        spreads = [c.square().mean(dim=(2, 3)).sqrt() for c in centred]
        blocks = [*means, *spreads, model.forward_head(final, pre_logits=True).flatten(1)]
        return torch.cat([nn.functional.normalize(b, dim=1) for b in blocks], dim=1)


def deployable_from_checkpoint(ckpt: dict[str, Any], temperature: float = 1.0) -> Deployable:
    """A checkpoint's model with its own mean and std inside and the given temperature, in eval mode."""
    cfg = ckpt["data_config"]
    return Deployable(model_from_checkpoint(ckpt), tuple(cfg["mean"]), tuple(cfg["std"]), temperature).eval()


def export_onnx(model: Deployable | Embedder | StageSummary, size: int, path: Path) -> None:
    """Write `model` as ONNX (opset 17, dynamic batch axis, its `outputs` named) and check the file with onnx's
    checker."""
    import onnx

    example = torch.rand(2, 3, size, size) * 255
    outputs = list(model.outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
