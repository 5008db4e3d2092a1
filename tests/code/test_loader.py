"""DataConfig and the transforms: the evaluation resize must survive the round trip a Triton client makes,
and train.augment adds its policy to training only."""

from __future__ import annotations

import pytest
import torch

from components.core.config import load_params
from components.core.errors import ParamsError
from components.data.loader import DataConfig, batch_mixer, transform


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


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_batch_mixing_blends_images_and_labels_alike(mixup: float, cutmix: float) -> None:
    """Each mixed image is a share of itself and a share of its batch neighbour, and its label is the same
    two classes in the same shares (MixUp blends pixels, CutMix pastes a box)."""
    images = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    mixed, soft = batch_mixer(mixup, cutmix, num_classes=5)(images, labels)
    assert mixed.shape == images.shape and soft.shape == (4, 5)
    assert torch.allclose(soft.sum(1), torch.ones(4)) and soft[:, 4].eq(0).all()
    for i in range(4):
        other = (i - 1) % 4  # torchvision mixes each image with the one before it
        share = soft[i, i].item()
        assert 0 < share <= 1 and soft[i, other].item() == pytest.approx(1 - share, abs=1e-6)
        # the pixels hold image i's share: the mean pixel value is the labels' blend of the two values
        assert mixed[i].mean().item() == pytest.approx(share * i + (1 - share) * other, abs=1e-4)


def test_batch_mixing_is_off_at_zero_and_refuses_negative_alphas() -> None:
    assert batch_mixer(0.0, 0.0, num_classes=5) is None
    with pytest.raises(ParamsError, match=r"train\.cutmix_alpha must be 0 \(off\) or more, got -1\.0"):
        load_params(None, ["train.cutmix_alpha=-1"])


def test_unknown_augment_policy_is_refused_with_the_choices() -> None:
    with pytest.raises(ParamsError, match=r"train\.augment must be none, randaugment or trivialaugment, got 'autoaug'"):
        load_params(None, ["train.augment=autoaug"])
