"""Traffic capture off the request path: images once per content, records per hour, a bounded folder, and
failures that drop and count samples instead of raising; then the folder read back, bad records counted."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from components.core.errors import SortflowError
from components.traffic.captures import read_window
from components.triton_models import novelty
from components.triton_models.capture import IMAGES, RECORDS, Capture, sniff_ext

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 1000


def _drain(capture: Capture, expected: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while capture.captured + capture.dropped < expected:
        assert time.monotonic() < deadline, (capture.captured, capture.dropped)
        time.sleep(0.01)


def test_each_image_is_stored_once_and_each_request_recorded(tmp_path: Path) -> None:
    capture = Capture(str(tmp_path / "cap"), 1.0, 10 * 1024 * 1024, "m", "3")
    capture.submit(JPEG, [0.1, 0.7, 0.2])
    capture.submit(JPEG, [0.1, 0.7, 0.2])
    capture.submit(b"garbage", None, "cannot decode image: nope")
    _drain(capture, 3)
    assert capture.captured == 3 and capture.dropped == 0 and capture.failure is None
    images = sorted(p.suffix for p in (tmp_path / "cap" / IMAGES).rglob("*.*"))
    assert images == [".bin", ".jpg"]
    window = read_window(tmp_path / "cap", hours=1)
    assert [s.decoded for s in window.samples] == [True, True, False]
    first = window.samples[0]
    assert (first.model, first.version, first.label, first.confidence) == ("m", "3", 1, 0.7)
    assert first.path.read_bytes() == JPEG and window.samples[2].error == "cannot decode image: nope"


def test_sampling_rate_and_formats() -> None:
    capture = Capture("/nonexistent-unused", 0.0, 1024, "m", "1")
    assert not any(capture.chosen() for _ in range(1000))  # rate 0: off, nothing chosen, no thread
    random.seed(0)
    share = sum(Capture("/nonexistent-unused", 0.3, 1024, "m", "1").chosen() for _ in range(10_000)) / 10_000
    assert share == pytest.approx(0.3, abs=0.015)  # 3.3 standard errors
    assert [sniff_ext(b) for b in (JPEG, b"\x89PNG\r\n\x1a\nxx", b"RIFF1234WEBPxx", b"BMxx", b"??")] == [
        "jpg",
        "png",
        "webp",
        "bmp",
        "bin",
    ]


def test_folder_stays_under_its_budget_oldest_images_first(tmp_path: Path) -> None:
    capture = Capture(str(tmp_path / "cap"), 1.0, 20_000, "m", "1")
    for i in range(40):
        capture.submit(JPEG + bytes([i]) * 1000, [1.0])
        _drain(capture, i + 1)
    size = sum(p.stat().st_size for p in (tmp_path / "cap").rglob("*") if p.is_file())
    assert size <= 20_000
    kept = {p.read_bytes()[-1] for p in (tmp_path / "cap" / IMAGES).rglob("*.jpg")}
    assert kept and min(kept) > 20 and 39 in kept  # the newest stay, the oldest went
    assert len(read_window(tmp_path / "cap", hours=1).samples) == 40  # records of evicted images remain


def test_a_folder_that_goes_away_drops_and_counts_and_logs_once(tmp_path: Path) -> None:
    capture = Capture(str(tmp_path / "cap"), 1.0, 10**6, "m", "1")
    for path in [*sorted((tmp_path / "cap").rglob("*"), reverse=True), tmp_path / "cap"]:
        path.rmdir()
    for i in range(3):
        capture.submit(JPEG + bytes([i]), [1.0])  # never raises
    _drain(capture, 3)
    assert capture.dropped == 3 and capture.captured == 0
    assert "sortflow capture: sample dropped" in capture.failure and "counted, not logged" in capture.failure
    assert not (tmp_path / "cap").exists()  # not silently recreated


def test_reading_a_missing_empty_or_corrupt_capture_folder(tmp_path: Path) -> None:
    with pytest.raises(SortflowError, match=r"no captured traffic \(publish.capture_dir\); turn capture on"):
        read_window(tmp_path / "nothing", hours=1)
    (tmp_path / "cap" / RECORDS).mkdir(parents=True)
    assert read_window(tmp_path / "cap", hours=1).samples == []
    hour = time.strftime("%Y%m%d-%H", time.gmtime())
    good = {"time": time.time(), "model": "m", "version": "1", "sha": "ab" * 16, "ext": "jpg", "decoded": True}
    lines = [json.dumps({**good, "top": [[0, 0.9]]}), '{"time": 1, "trunc', json.dumps(good), "[]"]
    (tmp_path / "cap" / RECORDS / f"{hour}.jsonl").write_text("\n".join(lines) + "\n")
    window = read_window(tmp_path / "cap", hours=1)
    assert len(window.samples) == 1 and window.skipped == 3
    assert window.skipped_example.endswith(
        f"{hour}.jsonl:2 (Unterminated string starting at: line 1 column 13 (char 12))"
    )


def test_monitor_without_enough_captured_traffic_says_what_to_do(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli("monitor", "-o", f"publish.capture_dir={tmp_path / 'none'}")
    assert code == 2 and "no captured traffic (publish.capture_dir)" in err and "Traceback" not in err
    capture = Capture(str(tmp_path / "cap"), 1.0, 10**6, "m", "1")
    for i in range(3):
        capture.submit(JPEG + bytes([i]), [0.2, 0.8])
    _drain(capture, 3)
    code, _, err = run_cli("monitor", "-o", f"publish.capture_dir={tmp_path / 'cap'}")
    assert code == 2 and "only 3 captured requests of version 1 in the last 24 h; monitor.min_samples is 100" in err
    empty = tmp_path / "empty"
    (empty / RECORDS).mkdir(parents=True)
    code, _, err = run_cli("monitor", "-o", f"publish.capture_dir={empty}")
    assert code == 2 and "no captured requests in the last 24 h" in err


def test_a_shadowed_request_is_always_captured_with_both_answers_and_their_agreement(tmp_path: Path) -> None:
    from components.traffic.windows import shadow_agreement

    capture = Capture(str(tmp_path / "cap"), 0.0, 10 * 1024 * 1024, "m", "3", shadow=True)  # capture rate 0
    assert not capture.chosen()  # unshadowed requests: not sampled at rate 0
    for i in range(10):  # shadowed: always captured; version 5 says class 2 on the last two
        capture.submit(JPEG + bytes([i]), [0.1, 0.7, 0.2], shadow=("5", [0.1, 0.2, 0.7] if i >= 8 else [0, 1, 0]))
    _drain(capture, 10)
    samples = read_window(tmp_path / "cap", hours=1).samples
    assert len(samples) == 10 and all(s.shadow_version == "5" for s in samples)
    assert [s.shadow_label for s in samples] == [1] * 8 + [2] * 2
    agreement = shadow_agreement(samples, ["glass", "metal", "paper"])
    # 8 of 10: the Wilson 95% interval is 0.490 to 0.943.
    assert (agreement.version, agreement.requests, agreement.agreement) == ("5", 10, 0.8)
    assert (agreement.low, agreement.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert agreement.flips == {"metal -> paper": 2}
    assert shadow_agreement(samples[:0], ["glass", "metal", "paper"]) is None


def test_what_the_model_saw_is_scored_in_the_background_recorded_compactly_and_read_back(tmp_path: Path) -> None:
    embedding = np.linspace(-1, 1, 128, dtype=np.float32)
    embedding /= np.linalg.norm(embedding)
    train = np.eye(128, dtype=np.float32)[[0, 1]]  # two training images: e0 and e1
    calls = []

    def scored(features: list[np.ndarray]) -> list[tuple[str, float]]:
        calls.append(len(features))
        return novelty.describe(features, novelty.Reference(train, 1, novelty.projection(128, 128)))

    capture = Capture(str(tmp_path / "cap"), 1.0, 10**6, "m", "1", describe=scored)
    capture.submit(JPEG, [0.2, 0.8], seen=embedding)
    capture.submit(JPEG + b"x", [0.2, 0.8])  # a version without an embedder
    capture.submit(JPEG + b"y", [0.2, 0.8], seen=train[1])
    _drain(capture, 3)
    assert calls == [2]  # the gathered samples' novelty in one product
    line = next((tmp_path / "cap" / RECORDS).glob("*.jsonl")).read_text().splitlines()[0]
    assert len(json.loads(line)["embedding"]) == 344  # 128 float16s in base64
    first, second, third = read_window(tmp_path / "cap", hours=1).samples
    assert first.novelty == pytest.approx(1 - embedding[:2].max(), abs=1e-6) and third.novelty == 0
    assert second.novelty is None and second.embedding is None
    np.testing.assert_allclose(novelty.decode(first.embedding), embedding, atol=1e-3)  # float16's precision


def test_a_failure_to_score_what_the_model_saw_costs_the_record_its_embedding_only(tmp_path: Path) -> None:
    def broken(embeddings: list[np.ndarray]) -> list[tuple[str, float]]:
        raise ValueError("shapes (1,128) and (64,2) not aligned")

    capture = Capture(str(tmp_path / "cap"), 1.0, 10**6, "m", "1", describe=broken)
    capture.submit(JPEG, [0.2, 0.8], seen=np.ones(128, np.float32))
    _drain(capture, 1)
    (sample,) = read_window(tmp_path / "cap", hours=1).samples
    assert capture.captured == 1 and sample.embedding is None and sample.novelty is None
    assert "not scored (shapes (1,128) and (64,2) not aligned); captured without it" in capture.failure


def test_novelty_is_the_distance_to_the_kth_nearest_training_embedding() -> None:
    train = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]  # two copies of e0, one each of e1 and e2
    queries = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0.6, 0.8, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(novelty.novelty(queries, train, 1), [0, 1, 1 - 0.8], atol=1e-6)
    np.testing.assert_allclose(novelty.novelty(queries, train, 2), [0, 1, 1 - 0.6], atol=1e-6)
    assert novelty.novelty(queries, train, 99)[0] == 1  # k beyond the training set: the farthest one


def test_the_projection_is_fixed_and_keeps_the_angles_between_features() -> None:
    features = np.random.default_rng(1).standard_normal((40, 1280)).astype(np.float32)
    matrix = novelty.projection(1280, 512)
    np.testing.assert_array_equal(matrix, novelty.projection(1280, 512))  # every export gets the same one
    embedded = novelty.project(features, matrix)
    assert embedded.shape == (40, 512)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1, atol=1e-5)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    # Johnson-Lindenstrauss: cosines survive 512 random dimensions to within a few hundredths.
    assert np.abs(embedded @ embedded.T - unit @ unit.T).max() < 0.2
    assert np.abs(embedded @ embedded.T - unit @ unit.T).mean() < 0.05
    kept = novelty.project(features[:, :64], novelty.projection(64, 512))  # no fewer numbers: the features kept
    np.testing.assert_allclose(kept, unit[:, :64] / np.linalg.norm(unit[:, :64], axis=1, keepdims=True), atol=1e-6)


def test_an_embeddings_file_without_a_projection_keeps_what_its_embedder_gave(tmp_path: Path) -> None:
    train = np.eye(8, dtype=np.float32)[:3]
    np.savez(tmp_path / "old.npz", train=train.astype(np.float16), neighbours=1)  # written before the projection
    reference = novelty.load_reference(str(tmp_path / "old.npz"))
    ((_, score),) = novelty.describe([np.eye(8, dtype=np.float32)[1] * 3], reference)
    assert reference.projection.shape == (8, 0) and score == pytest.approx(0, abs=1e-6)
