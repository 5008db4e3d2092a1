"""The README's first example: no training at all, ImageNet EfficientNet-Lite0 (offline weights)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., tuple[int, str, str]]


def test_predict_without_training_uses_imagenet_lite0(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image
    from skimage import data

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the exported model is cached under ~/.cache/sortflow
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).save(photo)
    code, out, err = run_cli("predict", "--input", str(photo))
    assert code == 0, err
    result = json.loads(out)["res"]
    assert result["label_names"][0] == "espresso" and result["scores"][0] > 0.8
    assert len(result["class_ids"]) == 5
    assert (tmp_path / "home/.cache/sortflow/efficientnet-lite0-imagenet/model.onnx").is_file()
