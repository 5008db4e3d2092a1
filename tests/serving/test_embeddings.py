"""What the model sees, end to end: the embedder that export writes, embeddings and novelty scores captured by a
real Triton server, the monitor's embedding tests on a new kind of object, and heatmaps in the review queue."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import Release
from tests.serving.test_release import load, params, val_pixels
from tests.support.helpers import TINY_TRAIN, captured_records, cls_dataset, free_port, overrides

MODEL = "sortflow-classifier"
# Images of a new kind of object, after each val image once (36): 57% of the window. The embedding test's power
# is bounded by the 36 val images it compares with, and repeated images would thicken its null's tail.
NEW = 48
# ImageNet features: the tiny from-scratch model of the other serving tests sees every image alike at 32 px.
SEEING = ("train.model=EfficientNet-Lite0", "train.pretrained=imagenet", "train.image_size=64", "train.epochs=1")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """A release of a model with ImageNet features, fine-tuned for an epoch: trained, evaluated, exported,
    registered and published."""
    workdir = tmp_path_factory.mktemp("seeing")
    dataset = cls_dataset(workdir / "ds", per_class=24, val_per_class=12)
    mlflow = f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db"
    rel = Release(workdir, dataset, overrides(f"dataset.dir={dataset}", *TINY_TRAIN, *SEEING, mlflow))
    for step in ("train", "evaluate", "export", "register"):
        assert rel.run(step) == 0, step
    return rel


def _smooth_jpeg(seed: int) -> bytes:
    """A photo-like image (smooth colour gradients), nothing like the release's noise images: a new kind of object."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:48] / 47.0
    colours = rng.uniform(0, 255, size=(3, 3))
    pixels = colours[0] * x[..., None] + colours[1] * y[..., None] + colours[2] * (1 - x[..., None]) * 0.5
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _send(port: int, files: list[bytes]) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    for data in files:  # one request per image, as a camera sends them
        inputs = [grpcclient.InferInput("image_bytes", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[data]], dtype=object))
        client.infer(f"{MODEL}_bytes", inputs)


def test_export_writes_an_embedder_that_agrees_with_the_classifier(release: Release) -> None:
    from components.model.checkpoints import load_checkpoint
    from components.model.onnx_session import onnx_embeddings, onnx_session
    from components.triton_models import novelty
    from tests.serving.test_release import local_probabilities

    export = release.workdir / "output/export"
    images = val_pixels(release)
    probabilities, features = onnx_embeddings(onnx_session(export / "embedder.onnx"), images)
    np.testing.assert_allclose(probabilities, local_probabilities(release, images), atol=1e-6)
    reference = novelty.load_reference(str(export / "embeddings.npz"))
    assert features.shape[1] == reference.projection.shape[0] > 512 and reference.projection.shape[1] == 512
    embedded = novelty.project(features, reference.projection)
    profile = load(release, "output/export/reference_profile.json")["embedding"]
    with np.load(export / "embeddings.npz") as data:
        assert len(data["train"]) == len((release.dataset / "train.txt").read_text().splitlines())
        np.testing.assert_allclose(data["val"], embedded, atol=1e-3)  # stored as float16
        scores = novelty.novelty(embedded, data["train"], profile["neighbours"])
        np.testing.assert_allclose(data["val_novelty"], scores, atol=2e-3)
    assert profile == {
        "file": "embeddings.npz",
        "dim": 512,
        "neighbours": 1,
        "novelty_p99": pytest.approx(float(np.quantile(scores, 0.99)), abs=2e-3),
    }
    assert load_checkpoint(export / "model.pt")["label_names"] == ["glass", "metal", "paper"]


def test_heatmaps_follow_the_weights(release: Release) -> None:
    """Adebayo et al.'s sanity check: the same images with randomised weights give other maps."""
    import timm
    from scipy.stats import spearmanr

    from components.model.checkpoints import load_checkpoint
    from components.model.heatmaps import Heatmaps
    from tests.serving.test_release import local_probabilities

    ckpt = load_checkpoint(release.workdir / "output/export/model.pt")
    images = val_pixels(release)
    classes = local_probabilities(release, images).argmax(1).tolist()  # as the review sheet: the predicted class
    trained = Heatmaps(ckpt).maps(images, classes)
    assert trained.shape == (len(images), 64, 64) and trained.min() >= 0 and trained.max() <= 1
    np.testing.assert_allclose(Heatmaps(ckpt).maps(images, classes), trained, atol=1e-5)  # deterministic
    shuffled = timm.create_model(ckpt["timm_name"], num_classes=ckpt["num_classes"]).state_dict()
    randomised = Heatmaps({**ckpt, "model": shuffled}).maps(images, classes)
    shows = trained.std(axis=(1, 2)) > 0
    assert shows.mean() > 0.5  # most trained maps point somewhere
    # A constant map (randomised weights may leave no positive evidence at all) shares no ranking with any.
    pairs = zip(trained[shows], randomised[shows], strict=True)
    rank = [spearmanr(a.ravel(), b.ravel()).statistic if b.std() else 0.0 for a, b in pairs]
    assert np.mean(rank) < 0.5, rank


def test_served_requests_carry_what_the_model_saw_and_the_monitor_sees_a_new_kind_of_object(
    release: Release, tmp_path: Path
) -> None:
    from components.model.onnx_session import onnx_embeddings, onnx_session
    from components.steps.serve import start, stop
    from components.triton_models import novelty

    ports = [f"serve.{key}={free_port()}" for key in ("grpc_port", "http_port", "metrics_port")]
    where = (
        f"publish.repo={tmp_path}/repo",
        f"publish.capture_dir={tmp_path}/capture",
        "publish.capture_rate=1",
        "publish.decode_instances=1",
        "monitor.min_samples=20",
        f"monitor.output={tmp_path}/monitor",
        f"review.output={tmp_path}/review",
        *ports,
    )
    ours = Release(release.workdir, release.dataset, [*release.args, *overrides(*where)])
    assert ours.run("publish") == 0
    served = params(release, *where)
    served.serve.workdir = str(tmp_path / "serve")
    val = [release.dataset / line.split()[0] for line in (release.dataset / "val.txt").read_text().splitlines()]
    start(served)
    try:
        _send(served.serve.grpc_port, [p.read_bytes() for p in val])
        _send(served.serve.grpc_port, [_smooth_jpeg(seed) for seed in range(NEW)])
        records = captured_records(tmp_path / "capture", len(val) + NEW)
    finally:
        stop(served)
    # Each record holds the embedding and novelty score of what the embedder gives offline for the same pixels.
    export = release.workdir / "output/export"
    _, features = onnx_embeddings(onnx_session(export / "embedder.onnx"), val_pixels(release))
    reference = novelty.load_reference(str(export / "embeddings.npz"))
    offline = novelty.project(features, reference.projection)
    expected = novelty.novelty(offline, reference.train, 1)
    first = records[: len(val)]
    # (The server decodes and resizes with PIL, evaluation with torchvision: pixels differ by a rounding.)
    captured = np.stack([novelty.decode(r["embedding"]) for r in first])
    assert (captured * offline).sum(1).min() > 0.999  # cosine similarity
    np.testing.assert_allclose([r["novelty"] for r in first], expected, atol=0.01)

    code = ours.run("monitor")
    result = json.loads((tmp_path / "monitor/monitor_result.json").read_text())
    checks = {c["check"]: c for c in result["checks"]}
    assert code == 3 and checks["embedding drift"]["drift"] and checks["novel images share"]["drift"], [
        (c["check"], c["statistic"], c["p_value"], c["detail"]) for c in checks.values()
    ]
    assert checks["novel images share"]["statistic"] > 0.3  # most of the new objects are novel

    # (This model is unsure of everything after its one epoch: no image is queued for low confidence.)
    assert ours.run("review", *overrides("review.size=10", "monitor.low_confidence=0.2")) == 0
    rows = list(csv.DictReader((tmp_path / "review/review.csv").open()))
    assert [r["why"] for r in rows].count("novel") >= 5 and all(r["novelty"] for r in rows)
    assert all((tmp_path / "review/heatmaps").glob("*.png"))
    assert len(list((tmp_path / "review/heatmaps").glob("*.png"))) == len(rows)
    tasks = json.loads((tmp_path / "review/label_studio_tasks.json").read_text())
    assert all(t["data"]["heatmap"].endswith(".png") for t in tasks)
    assert '<Image name="heatmap" value="$heatmap"/>' in (tmp_path / "review/label_studio_config.xml").read_text()
    assert 'class="heatmap"' in (tmp_path / "review/index.html").read_text()
