"""DataConfig: the evaluation resize must survive the round trip a Triton client makes."""

from __future__ import annotations

from components.loader import DataConfig


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
