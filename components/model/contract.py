"""What an exported model takes and gives: its files, its tensor names and its preprocessing.

Torch-free, so that register, publish and the Triton clients start quickly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
LABELS_FILE = "labels.txt"
RESULT_FILE = "export_result.json"
PROFILE_FILE = "reference_profile.json"  # what normal traffic looks like for this model (profiles.py)
# The same model with a second output, `embedding`: what <model>_bytes runs to capture what the model sees.
EMBEDDER_FILE = "embedder.onnx"
EMBEDDING_NAME = "embedding"
FEATURES_NAME = "features"  # the output of the stage summary that the dataset audit classifies with
EMBEDDINGS_FILE = "embeddings.npz"  # train and val embeddings: the novelty score's neighbours, the drift reference
WEIGHTS_FILE = "model.pt"  # the torch weights, for the heatmaps of the review sheet


@dataclass(frozen=True)
class DataConfig:
    """The model's preprocessing (from its timm pretrained config) at the training resolution."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str
    crop_scale_min: float = 0.08
    augment: str = "none"  # training only: none, randaugment or trivialaugment (train.augment)

    @classmethod
    def for_model(
        cls, timm_cfg: object, image_size: int, crop_scale_min: float = 0.08, augment: str = "none"
    ) -> DataConfig:
        return cls(
            image_size=image_size,
            crop_scale_min=crop_scale_min,
            augment=augment,
            mean=tuple(float(x) for x in timm_cfg.mean),
            std=tuple(float(x) for x in timm_cfg.std),
            crop_pct=float(timm_cfg.crop_pct or 0.875),
            interpolation=str(timm_cfg.interpolation or "bicubic"),
        )

    @property
    def resize_size(self) -> int:
        # timm's floor(size / crop_pct); the epsilon keeps a crop_pct derived back from a resize size
        # (size / resize, as a Triton client does) from landing one pixel short.
        return math.floor(self.image_size / self.crop_pct + 1e-6)
