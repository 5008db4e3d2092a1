"""Export's parity check: float32 noise between torch and onnxruntime passes, real mismatches do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.core.errors import SortflowError
from components.model.deployable import Deployable, export_onnx
from components.model.onnx_session import onnx_probabilities, onnx_session
from components.model.zoo import create_model, get_spec
from components.steps.export import check_parity

SIZE = 64
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def _deployable(mean: tuple[float, ...], std: tuple[float, ...]) -> Deployable:
    """EfficientNet-Lite0 with its real ImageNet weights (offline): a model whose answers depend on the image."""
    return Deployable(create_model(get_spec("EfficientNet-Lite0"), 1000, "imagenet"), mean, std).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Deployable, Path, np.ndarray]:
    from skimage import data

    model = _deployable((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Lite0's own preprocessing
    path = tmp_path_factory.mktemp("parity") / "model.onnx"
    export_onnx(model, SIZE, path)
    photos = [torch.from_numpy(getattr(data, name)()[..., :3].copy()).permute(2, 0, 1).float() for name in PHOTOS]
    images = torch.cat([resize(p[None], SIZE, "bicubic") for p in photos])
    return model, path, images.numpy()


def resize(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    return torch.nn.functional.interpolate(images, size=(size, size), mode=mode).clamp(0, 255)


def test_float32_noise_passes_where_an_absolute_bound_alone_failed(exported) -> None:
    model, path, images = exported
    got = onnx_probabilities(onnx_session(path), images)
    assert check_parity(model, images, got, tolerance=1e-4, rtol=1e-3)["same_top1"]
    # Relative noise of 8e-4, as float32 kernels produce on the large probabilities of a confident model.
    noisy = got * (1 + 8e-4 * np.sign(np.random.default_rng(1).standard_normal(got.shape)))
    assert np.abs(noisy - got).max() > 1e-4  # an absolute tolerance of 1e-4 alone refuses this
    check_parity(model, images, noisy.astype(np.float32), tolerance=1e-4, rtol=1e-3)


def test_real_mismatches_are_refused(exported, tmp_path: Path) -> None:
    model, path, images = exported
    session = onnx_session(path)
    swapped = onnx_probabilities(session, np.ascontiguousarray(images[:, ::-1]))  # BGR instead of RGB
    small = resize(torch.from_numpy(images), SIZE // 2, "nearest")  # a wrong resize: half the detail
    resized = onnx_probabilities(session, resize(small, SIZE, "nearest").numpy())
    other = tmp_path / "other.onnx"
    export_onnx(_deployable((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), SIZE, other)  # another mean and std
    normalised = onnx_probabilities(onnx_session(other), images)
    for name, got in {"channels": swapped, "resize": resized, "normalisation": normalised}.items():
        with pytest.raises(SortflowError, match="disagrees with torch"):
            check_parity(model, images, got, tolerance=1e-4, rtol=1e-3)
            pytest.fail(f"a wrong {name} passed the parity check")


@pytest.mark.parametrize("name", ["PP-LCNet_x0_5", "PP-HGNetV2_B0", "MobileNetV3_small_x1_0", "ResNet50"])
def test_the_embedder_gives_the_classifiers_probabilities_and_its_pooled_features(name: str) -> None:
    """Heads differ between the zoo's families (a conv after the pool, a norm, a plain linear layer): for each,
    the embedder's classifier layer on its pooled features gives exactly the classifier's probabilities."""
    from components.model.deployable import Embedder

    torch.manual_seed(0)
    model = create_model(get_spec(name), num_classes=6).eval()
    deployable = Deployable(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), temperature=1.3).eval()
    image = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        probabilities, pooled = Embedder(deployable)(image)
        expected = deployable(image)
        features = model.forward_head(model.forward_features(deployable.normalized(image)), pre_logits=True)
    torch.testing.assert_close(probabilities, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(pooled, features.flatten(1))
    assert pooled.shape[1] == (getattr(model, "head_hidden_size", None) or model.num_features)
