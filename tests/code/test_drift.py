"""The drift statistics on synthetic inputs with known answers, and the image statistics they compare."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from scipy.stats import binomtest

from components.data.images import STATS, image_stats
from components.traffic import drift


def test_class_mix_matches_scipy_and_sees_a_dominant_class() -> None:
    from scipy.stats import chisquare

    reference = [0] * 50 + [1] * 30 + [2] * 20
    same = [0] * 100 + [1] * 60 + [2] * 40
    stat, p = drift.class_mix(same, reference, 3)
    expected = (np.array([50, 30, 20]) + 0.5) / 101.5 * 200
    assert (stat, p) == pytest.approx(tuple(chisquare([100, 60, 40], expected)))
    assert p > 0.9
    _, p_dominant = drift.class_mix([2] * 160 + [0] * 40, reference, 3)
    assert p_dominant < 1e-10
    # A class the reference never predicted still has a finite expectation: no division by zero.
    _, p_new = drift.class_mix([3] * 5 + [0] * 95, reference, 4)
    assert 0 <= p_new < 1e-6


def test_two_sample_separates_shifted_distributions_only() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(120, 30, 500)
    _, p_same = drift.two_sample(rng.normal(120, 30, 200), reference)
    stat, p_dark = drift.two_sample(rng.normal(70, 30, 200), reference)
    assert p_same > 0.01 and p_dark < 1e-12 and stat > 0.5
    assert drift.two_sample([], reference) == (0.0, 1.0)


def test_share_above_is_a_one_sided_binomial_test() -> None:
    from scipy.stats import binomtest

    share, p = drift.share_above(30, 100, 0.1)
    assert share == 0.3 and p == pytest.approx(binomtest(30, 100, 0.1, alternative="greater").pvalue)
    assert drift.share_above(5, 100, 0.1)[1] > 0.9  # below the reference is not drift
    assert drift.share_above(0, 0, 0.1) == (0.0, 1.0)
    assert drift.share_above(5, 100, 0.0)[1] < 0.001  # a reference share of 0 still allows a test


def test_findings_hold_each_test_to_its_share_of_alpha() -> None:
    found = drift.findings({"a": (1.0, 0.004, ""), "b": (1.0, 0.006, ""), "c": (1.0, 0.5, "")}, alpha=0.015)
    assert [f.threshold for f in found] == pytest.approx([0.005] * 3)
    assert [f.drift for f in found] == [True, False, False]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_image_stats_see_darker_grayscale_and_blurred_photos() -> None:
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    base = image_stats(_jpeg(photo))
    assert base["decoded"] and base["format"] == "JPEG" and (base["width"], base["height"]) == (512, 512)
    assert base["colourfulness"] > 20 and not base["grayscale"]
    dark = image_stats(_jpeg(ImageEnhance.Brightness(photo).enhance(0.5)))
    assert dark["brightness"] < 0.6 * base["brightness"]
    gray = image_stats(_jpeg(photo.convert("L")))
    assert gray["grayscale"] and gray["colourfulness"] < 1
    blurred = image_stats(_jpeg(photo.filter(ImageFilter.GaussianBlur(4))))
    assert blurred["sharpness"] < 0.5 * base["sharpness"]
    wide = image_stats(_jpeg(photo.resize((400, 100))))
    assert wide["aspect"] == pytest.approx(4.0)
    broken = image_stats(b"not an image")
    assert broken["decoded"] is False and "UnidentifiedImageError" in broken["error"]


def test_profile_statistics_equal_live_ones_for_the_same_images(tmp_path) -> None:
    """Constant statistics (every photo 4:3) must compare equal, not as two separated distributions."""
    from components.traffic.profiles import reference_profile

    paths = []
    for i in range(30):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(np.full((30, 40, 3), 8 * i, np.uint8)).save(path)
        paths.append(str(path))
    profile = reference_profile(paths, np.eye(3)[[i % 3 for i in range(30)]], ["a", "b", "c"], [0.5, 0.5, 0.5])
    live = [image_stats(Path(path).read_bytes())["aspect"] for path in paths]
    assert drift.two_sample(live, profile["stats"]["aspect"])[1] == 1.0


def test_the_unsure_share_is_compared_with_the_val_sets() -> None:
    """With the thresholds in the profile, the monitor tests whether more live answers are unsure than on val;
    a profile from before the unsure route has no such test."""
    import pandas as pd

    from components.core.config import Params
    from components.traffic.windows import drift_tests

    profile = {
        "labels": ["a", "b"],
        "thresholds": [0.8, 0.6],
        "predicted": [0, 1] * 50,
        "confidence": [0.9, 0.7] * 45 + [0.5] * 10,  # 10% of val answers are unsure
        "stats": {key: [1.0] * 100 for key in STATS},
    }
    rng = np.random.default_rng(0)

    def live(unsure: int) -> pd.DataFrame:
        confidence = [0.5] * unsure + [0.95] * (100 - unsure)
        rows = {"decoded": True, "image_present": True, "class_id": rng.integers(0, 2, 100)}
        frame = pd.DataFrame({**rows, "confidence": confidence, "label": "a"})
        return frame.assign(**{key: 1.0 for key in STATS})

    def unsure_check(frame: pd.DataFrame, prof: dict) -> list:
        return [f for f in drift_tests(frame, prof, Params()) if f.check == "unsure share"]

    (calm,) = unsure_check(live(10), profile)
    (alarm,) = unsure_check(live(40), profile)
    assert calm.statistic == 0.1 and not calm.drift
    assert alarm.statistic == 0.4 and alarm.drift and "40.0% unsure vs 10.0% on val" in alarm.detail
    assert unsure_check(live(40), {k: v for k, v in profile.items() if k != "thresholds"}) == []


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_mmd_equals_its_definition_and_its_p_value_is_calibrated() -> None:
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    squared = cdist(np.vstack([x, y]), np.vstack([x, y]), "sqeuclidean")
    kernel = np.exp(-squared / np.median(squared[np.triu_indices(12, 1)]))
    expected = kernel[:5, :5].mean() + kernel[5:, 5:].mean() - 2 * kernel[:5, 5:].mean()
    assert drift.mmd(x, y, 99)[0] == pytest.approx(expected)
    # Same distribution: p-values roughly uniform (a level-0.1 test fires about 1 time in 10).
    same = [(_unit(rng.normal(size=(60, 16))), _unit(rng.normal(size=(90, 16)))) for _ in range(60)]
    p_values = [drift.mmd(x, y, 200, seed)[1] for seed, (x, y) in enumerate(same)]
    assert 0.02 <= np.mean(np.array(p_values) < 0.1) <= 0.2
    # A cluster of new points: the smallest p-value the permutations can give.
    shifted = _unit(rng.normal(size=(60, 16)) + np.eye(16)[0] * 4)
    assert drift.mmd(shifted, _unit(rng.normal(size=(90, 16))), 999)[1] == pytest.approx(1 / 1000)
    assert drift.mmd(shifted[:1], shifted, 99) == (0.0, 1.0)  # one live embedding: no test


def test_the_novel_share_is_compared_with_the_val_sets_own() -> None:
    from components.traffic.windows import _novel_share

    profile = {"embedding": {"novelty_p99": 0.5, "val_novelty": [0.1] * 95 + [0.9] * 5}}  # 5% of val above
    seen = pd.DataFrame({"novelty": [0.1] * 90 + [0.9] * 10})
    share, p, detail = _novel_share(seen, profile)
    assert share == 0.1 and p == pytest.approx(binomtest(10, 100, 0.05, alternative="greater").pvalue)
    assert "10.0% above the val images' 99th percentile of novelty (0.500)" in detail


def test_a_damaged_embeddings_file_is_named_with_the_fix(tmp_path) -> None:
    import json

    from components.core.errors import SortflowError
    from components.traffic.windows import read_profile

    (tmp_path / "reference_profile.json").write_text(json.dumps({"labels": ["a"], "embedding": {"dim": 2}}))
    (tmp_path / "embeddings.npz").write_bytes(b"PK\x03\x04 not a zip")
    files = {name: tmp_path / name for name in ("reference_profile.json", "embeddings.npz")}
    with pytest.raises(SortflowError, match=r"embeddings.npz: not a readable embeddings file .*; publish the version"):
        read_profile(files, "1", "m")
    (tmp_path / "embeddings.npz").unlink()  # an older version without the file: no embedding tests
    assert "embedding" not in read_profile(files, "1", "m")
