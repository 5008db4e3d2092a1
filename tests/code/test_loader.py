"""DataConfig and the transforms: the evaluation resize must survive the round trip a Triton client makes,
and train.augment adds its policy to training only."""

from __future__ import annotations

import pytest
import torch

from components.config import load_params
from components.errors import ParamsError
from components.loader import DataConfig, transform


def test_resize_size_round_trips_through_crop_pct() -> None:
    """publish writes resize_size; a gRPC client rebuilds crop_pct = size / resize and must get it back."""
    for size in range(16, 513, 7):
        for resize in range(size, 2 * size, 3):
            cfg = DataConfig(
                image_size=size, mean=(0, 0, 0), std=(1, 1, 1), crop_pct=size / resize, interpolation="bicubic"
            )
            assert cfg.resize_size == resize, (size, resize)
    # timm's values are unchanged
    base = {"mean": (0, 0, 0), "std": (1, 1, 1), "interpolation": "bicubic"}
    assert DataConfig(image_size=224, crop_pct=0.875, **base).resize_size == 256
    assert DataConfig(image_size=160, crop_pct=0.875, **base).resize_size == 182


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_augment_policy_changes_training_images_only(policy: str) -> None:
    base = {"image_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.875, "interpolation": "bicubic"}
    image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    plain, augmented = DataConfig(**base, crop_scale_min=1.0), DataConfig(**base, crop_scale_min=1.0, augment=policy)
    outputs = []
    for cfg in (plain, augmented):
        torch.manual_seed(0)
        outputs.append(torch.stack([transform(cfg, training=True)(image) for _ in range(8)]))
    assert outputs[0].shape == outputs[1].shape == (8, 3, 32, 32) and outputs[1].dtype == torch.float32
    assert not torch.equal(outputs[0], outputs[1])
    assert torch.equal(transform(plain, training=False)(image), transform(augmented, training=False)(image))


def test_unknown_augment_policy_is_refused_with_the_choices() -> None:
    with pytest.raises(ParamsError, match=r"train\.augment must be none, randaugment or trivialaugment, got 'autoaug'"):
        load_params(None, ["train.augment=autoaug"])
