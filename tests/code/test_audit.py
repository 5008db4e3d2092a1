"""The dataset audit: near-duplicate pairs against brute force, a resized and re-encoded copy across splits found
as a leak, and a flipped label found among colour-coded classes."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from components.data.audit import near_pairs
from tests.support.helpers import TINY_TRAIN, overrides

Run = Callable[..., tuple[int, str, str]]
COLOURS = {"glass": (40, 160, 60), "metal": (150, 150, 160), "paper": (230, 220, 190)}


@settings(max_examples=200, deadline=None, database=None)
@given(
    hashes=st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=30),
    flips=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 63)), max_size=20),
    distance=st.integers(0, 16),
)
def test_near_pairs_equal_brute_force(hashes: list[int], flips: list[tuple[int, int]], distance: int) -> None:
    values = list(hashes)
    for i, bit in flips:  # near copies: a few bits flipped in copies of some hashes
        if i < len(values):
            values.append(values[i] ^ (1 << bit))
    expected = [
        (i, j, (values[i] ^ values[j]).bit_count())
        for i in range(len(values))
        for j in range(i + 1, len(values))
        if (values[i] ^ values[j]).bit_count() <= distance
    ]
    assert near_pairs(values, distance) == expected


def _photo(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    """A 64 px picture: a background of the class's colour with two small shapes placed by the seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 64), colour)
    draw = ImageDraw.Draw(image)
    for _ in range(2):
        x, y, r = (int(v) for v in rng.integers(8, 56, 3) // (1, 1, 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)
    return path


def _dataset(root: Path, per_class: int = 10) -> Path:
    train, val = [], []
    for label, (name, colour) in enumerate(COLOURS.items()):
        for i in range(per_class):
            rel = f"images/{name}/{name}_{i}.jpg"
            _photo(root / rel, colour, 100 * label + i)
            (val if i < 3 else train).append(f"{rel} {label}\n")
    (root / "label.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(COLOURS)))
    (root / "train.txt").write_text("".join(train))
    (root / "val.txt").write_text("".join(val))
    return root


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_resized_reencoded_copy_across_splits_is_a_leak_and_a_flipped_label_is_found(
    run_cli: Run, tmp_path: Path
) -> None:
    data = _dataset(tmp_path / "data")
    with Image.open(data / "images/glass/glass_5.jpg") as original:  # a train image, shot again smaller
        original.resize((48, 48)).save(data / "images/glass/again.jpg", quality=70)
    with (data / "val.txt").open("a") as f:
        f.write("images/glass/again.jpg 0\n")
    train = (data / "train.txt").read_text().replace("images/paper/paper_7.jpg 2", "images/paper/paper_7.jpg 1")
    (data / "train.txt").write_text(train)  # a paper photo labelled metal
    settings = overrides(
        f"dataset.dir={data}", *TINY_TRAIN, "train.epochs=4", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"
    )

    code, out, err = run_cli("dataset", "audit", *settings)
    assert code == 0 and "likely label errors: not looked for (no trained checkpoint" in out, err
    assert run_cli("train", *settings)[0] == 0
    code, out, err = run_cli("dataset", "audit", *settings, "-o", "audit.fail_on_leak=true", "--json")
    assert code == 1, err
    result = json.loads(out)
    assert result["leaks"] >= 1 and result["label_issues"] >= 1
    pairs = _rows("output/audit/near_duplicates.csv")
    copy = {"images/glass/glass_5.jpg", "images/glass/again.jpg"}
    (leak,) = [p for p in pairs if {p["a"].split()[1], p["b"].split()[1]} == copy]
    assert leak["cross_split"] == "True" and leak["labels_differ"] == "False"
    assert all(p["cross_split"] == "True" for p in pairs[: result["leaks"]])  # leaks first
    issues = _rows("output/audit/label_issues.csv")
    assert issues[0]["file"].endswith("images/paper/paper_7.jpg") and (issues[0]["given"], issues[0]["suggested"]) == (
        "metal",
        "paper",
    )
    report = json.loads(Path("output/audit/audit_result.json").read_text())
    assert report["leak_check"]["severity"] == "critical" and not report["leak_check"]["success"]
    sheet = Path("output/audit/index.html").read_text()
    assert sheet.count("data:image/png;base64,") >= 3 and "across splits" in sheet
    # The person confirms the suggestion in the audit's review.csv; add-reviewed relabels the listed image.
    queue = _rows("output/audit/review.csv")
    assert queue[0]["file"].endswith("images/paper/paper_7.jpg") and queue[0]["suggested"] == "paper"
    assert Path("output/audit", queue[0]["file"]).resolve() == (data / "images/paper/paper_7.jpg").resolve()
    with open("output/audit/review.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(queue[0]))
        writer.writeheader()
        writer.writerows([{**queue[0], "label": "paper"}, *queue[1:]])
    code, out, err = run_cli("dataset", "add-reviewed", "output/audit/review.csv", *settings, "--json")
    assert code == 0 and json.loads(out)["relabelled"][0]["new"] == "paper", err
    assert "images/paper/paper_7.jpg 2" in (data / "train.txt").read_text().splitlines()


def test_label_issues_look_with_the_weights_training_started_from() -> None:
    """A network fine-tuned on the labels under audit has learned the wrong ones too: the audit uses the
    weights its training started from (train.pretrained), at the input size they were trained at, and the
    fine-tuned ones only after training from scratch."""
    import torch

    from components.model.label_issues import unlearned
    from components.model.zoo import create_model, get_spec

    spec = get_spec("EfficientNet-Lite0")
    tuned = create_model(spec, 3, "none").state_dict()
    ckpt = {"timm_name": spec.timm_name, "num_classes": 3, "model": tuned, "data_config": {"image_size": 64}}
    assert unlearned(ckpt, "none") is ckpt
    start = unlearned(ckpt, "imagenet")["model"]
    assert unlearned(ckpt, "imagenet")["data_config"]["image_size"] == spec.input_size == 224
    imagenet = create_model(spec, 3, "imagenet").state_dict()
    assert torch.equal(start["conv_stem.weight"], imagenet["conv_stem.weight"])
    assert not torch.equal(start["conv_stem.weight"], tuned["conv_stem.weight"])


def test_stage_summary_is_unit_blocks_of_every_stage_and_onnx_runs_it_as_torch(tmp_path: Path) -> None:
    """The audit's features: a mean and a spread per channel of each of the last stages, then the pooled
    penultimate features, each block unit length; its ONNX file gives what torch gives."""
    import torch

    from components.model.contract import FEATURES_NAME, INPUT_NAME
    from components.model.deployable import Deployable, StageSummary, export_onnx
    from components.model.onnx_session import onnx_session
    from components.model.zoo import create_model, get_spec

    torch.manual_seed(0)
    net = create_model(get_spec("EfficientNet-Lite0"), 3, "imagenet").eval()
    summary = StageSummary(Deployable(net, (0.5,) * 3, (0.5,) * 3)).eval()
    channels = [info["num_chs"] for info in net.feature_info][-summary.stages :]
    widths = [*channels, *channels, getattr(net, "head_hidden_size", None) or net.num_features]
    images = torch.rand(3, 3, 64, 64) * 255
    with torch.no_grad():
        out = summary(images).numpy()
    assert summary.stages == 5 and out.shape == (3, sum(widths))
    bounds = np.cumsum(widths)[:-1]
    norms = np.stack([np.linalg.norm(block, axis=1) for block in np.split(out, bounds, axis=1)])
    assert np.allclose(norms, 1, atol=1e-5)
    export_onnx(summary, 64, tmp_path / "features.onnx")
    served = onnx_session(tmp_path / "features.onnx").run([FEATURES_NAME], {INPUT_NAME: images.numpy()})[0]
    assert np.abs(served - out).max() < 1e-4


def test_out_of_fold_probabilities_learn_a_signal_and_not_noise() -> None:
    """Each image is scored by a regression that did not see it: labels that the features carry come back,
    and random labels get about the class shares, however many features there are to memorise them with."""
    from components.model.label_issues import out_of_fold_probabilities

    rng = np.random.default_rng(0)
    features = rng.normal(size=(240, 400)).astype(np.float32)
    carried = rng.integers(0, 3, size=240)
    signal = features[:, :40].copy()
    signal[np.arange(240), carried] += 3  # each class lifts one feature of its own
    found = out_of_fold_probabilities(signal, carried, 4, folds=5)
    assert found.shape == (240, 4) and np.allclose(found.sum(axis=1), 1, atol=1e-5)
    assert (found.argmax(axis=1) == carried).mean() > 0.85 and found[:, 3].max() == 0  # class 3 has no image
    noise = rng.integers(0, 3, size=240)
    given = out_of_fold_probabilities(features, noise, 3, folds=5)[np.arange(240), noise]
    assert abs(given.mean() - 1 / 3) < 0.05
