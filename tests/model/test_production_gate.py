"""The production gate on real photos from another camera: TrashNet (../shared/data), with the production set
shot underexposed (every pixel at a quarter of its brightness, as a camera with a shorter exposure would).

Two real models, fine-tuned from the offline ImageNet weights of EfficientNet-Lite0 on the same photos: one
on the well-lit photos only, one also on underexposed copies of them. The val set is well lit, and the val
gate is set to let either in; on the underexposed production images the first is clearly worse, and the
production gate sees it both ways: the second is promoted over the first, the first is refused after it.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from tests.support.helpers import TRASHNET, overrides

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TRASHNET.is_file(), reason=f"TrashNet archive not found at {TRASHNET}"),
]

Run = Callable[..., tuple[int, str, str]]
TRAIN, VAL, PRODUCTION = 40, 10, 15  # photos per class
EXPOSURE = 0.25


def _darker(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as image:
        ImageEnhance.Brightness(image.convert("RGB")).enhance(EXPOSURE).save(dst, quality=95)


def _datasets(root: Path) -> tuple[Path, Path]:
    """Two ClsDatasets with the same val and production lists: `lit` trains on well-lit photos, `both` also on
    underexposed copies of them. The production photos are underexposed, and none is in train or val."""
    with tarfile.open(TRASHNET) as tar:
        tar.extractall(root / "raw", filter="data")
    source = next((root / "raw").glob("*/cardboard")).parent
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    lists: dict[str, list[str]] = {"train": [], "dark": [], "val": [], "production": []}
    for dataset in ("lit", "both"):
        (root / dataset).mkdir()
    for label, name in enumerate(classes):
        photos = sorted((source / name).glob("*.jpg"))[: TRAIN + VAL + PRODUCTION]
        for i, photo in enumerate(photos):
            rel = f"images/{name}/{photo.name}"
            if i < TRAIN + VAL:
                for dataset in ("lit", "both"):
                    (root / dataset / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(photo, root / dataset / rel)
                lists["train" if i < TRAIN else "val"].append(f"{rel} {label}\n")
            if i < TRAIN:
                dark = f"images/{name}/dark-{photo.name}"
                _darker(photo, root / "both" / dark)
                lists["dark"].append(f"{dark} {label}\n")
            if i >= TRAIN + VAL:
                shot = f"images/{name}/line-{photo.name}"
                for dataset in ("lit", "both"):
                    _darker(photo, root / dataset / shot)
                lists["production"].append(f"{shot} {label}\n")
    for dataset, train in (("lit", lists["train"]), ("both", lists["train"] + lists["dark"])):
        (root / dataset / "label.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(classes)))
        (root / dataset / "train.txt").write_text("".join(train))
        (root / dataset / "val.txt").write_text("".join(lists["val"]))
        (root / dataset / "production.txt").write_text("".join(lists["production"]))
    return root / "lit", root / "both"


def test_the_gate_promotes_on_the_lines_photos_and_refuses_a_model_that_only_knows_well_lit_ones(
    run_cli: Run, tmp_path: Path
) -> None:
    lit, both = _datasets(tmp_path / "data")
    common = overrides(
        "train.model=EfficientNet-Lite0",
        "train.pretrained=imagenet",
        "train.image_size=96",
        "train.epochs=4",
        "train.batch_size=16",
        "train.learning_rate=0.05",
        "dataset.num_workers=1",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "register.min_improvement=-1",  # the val gate lets every model in: the production images decide
        # A line without a manual sorter: an unsure item costs as much as a wrong one. (At the default 0.2, a
        # model that answers unsure to every underexposed photo would be the cheapest.)
        "register.unsure_cost=1",
    )

    def release(dataset: Path, name: str) -> dict:
        where = overrides(f"dataset.dir={dataset}", f"train.output=output/{name}", f"export.output=output/{name}-onnx")
        where += overrides(f"evaluate.output=output/{name}-eval")
        for step in ("train", "evaluate", "export", "register"):
            code, out, err = run_cli(step, *common, *where)
            assert code == 0, (step, out, err)
        return json.loads(Path("output/register/register_result.json").read_text())

    first = release(lit, "lit")
    assert first["promoted"] and first["production"]["decision"] == "skipped"
    better = release(both, "both")  # knows underexposed photos: better on the line
    production = better["production"]
    assert better["promoted"] and production["decision"] == "promote", production
    assert production["challenger"]["top1"] > production["champion"]["top1"] + 0.15
    # The first model (well-lit photos only) registered again: worse on the line than the champion now.
    where = overrides(f"dataset.dir={lit}", "export.output=output/lit-onnx")
    assert run_cli("register", *common, *where)[0] == 0
    again = json.loads(Path("output/register/register_result.json").read_text())
    production = again["production"]
    assert not again["promoted"] and production["decision"] == "refuse", production
    assert any(r.startswith("worse under the paired test") for r in production["reasons"])
    assert any(r.startswith("costs more") for r in production["reasons"])
    assert "refused on 90 production images" in again["decision"]
