"""Captured traffic against its reference: the window a version served, the reference profile of that version,
a table of the window's requests with their image statistics, and the drift tests between the two.

Shared by the monitor and review steps.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.config import Params
from components.core.errors import InputError
from components.data.images import STATS, decode_all, image_stats
from components.integrations.triton_repo import BESIDE_MODEL
from components.model.contract import EMBEDDINGS_FILE, PROFILE_FILE
from components.traffic import drift
from components.traffic.captures import Sample, Window, read_window
from components.triton_models import novelty


@contextlib.contextmanager
def reference_files(params: Params, version: str) -> Iterator[dict[str, Path]]:
    """The files beside a registry version's model (`triton_repo.BESIDE_MODEL`: the profile, the embedder, the
    embeddings, the weights): in the published folder when it is there, else downloaded from the registry
    into a folder removed afterwards. An older version lacks some."""
    folder = Path(params.publish.repo) / params.register.model_name / version
    if (folder / PROFILE_FILE).is_file():
        yield {file: folder / file for file in BESIDE_MODEL}
        return
    from components.integrations import mlflow_tracking
    from components.integrations.mlflow_registry import downloaded

    client, _ = mlflow_tracking.client(params.mlflow)
    with downloaded(params.mlflow, client.get_model_version(params.register.model_name, version)) as files:
        yield files


def read_profile(files: dict[str, Path], version: str, name: str) -> dict[str, Any]:
    """The reference profile among a version's files (`reference_files`), with the val embeddings and their
    novelty scores (`embedding`'s `val` and `val_novelty`, arrays) where the version has an embeddings file."""
    if not files[PROFILE_FILE].is_file():
        raise InputError(
            f"registry version {version} of {name!r} has no reference profile (registered before profiles "
            "existed); export and register a model again to monitor it"
        )
    profile = json.loads(files[PROFILE_FILE].read_text(encoding="utf-8"))
    embeddings = files[EMBEDDINGS_FILE]
    if "embedding" not in profile or not embeddings.is_file():
        profile.pop("embedding", None)
        return profile
    try:
        with np.load(embeddings) as data:
            val, scores = data[novelty.VAL].astype(np.float32), data[novelty.VAL_NOVELTY]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{embeddings}: not a readable embeddings file ({exc}); publish the version again") from None
    profile["embedding"].update(val=val, val_novelty=scores)
    return profile


def load_profile(params: Params, version: str) -> dict[str, Any]:
    """The reference profile of a registry version: beside the published model, else from the registry."""
    with reference_files(params, version) as files:
        return read_profile(files, version, params.register.model_name)


def _stats_by_sha(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    """Image statistics of each distinct captured image, decoded once (in a process pool when there are many)."""
    unique = {s.sha: s.path for s in samples}
    paths = [str(p) if p.is_file() else None for p in unique.values()]
    todo = [p for p in paths if p]
    # Statistics of a draft-decoded image take about a millisecond: a pool pays off only for thousands.
    computed = dict(zip(todo, decode_all(image_stats, todo, 0, min_for_pool=2000), strict=True))
    return {sha: computed[p] if p else {"decoded": None} for sha, p in zip(unique, paths, strict=True)}


def live_table(samples: list[Sample], labels: list[str]) -> pd.DataFrame:
    """One row per captured request: when, which version, what it predicted and how sure, and its image."""
    stats = _stats_by_sha(samples)
    rows = []
    for s in samples:
        image = stats[s.sha]
        row = {"time": s.time, "version": s.version, "sha": s.sha, "file": str(s.path), "decoded": s.decoded}
        row.update(label=labels[s.label] if s.label is not None else None, class_id=s.label, confidence=s.confidence)
        row.update(shadow_class_id=s.shadow_label)  # the shadow run's class, where one classified the request
        row.update(novelty=s.novelty, embedding=s.embedding)  # what the model saw, where it has an embedder
        row.update(image_present=image.get("decoded") is not None, format=image.get("format"))
        row.update({k: image.get(k) for k in STATS})
        rows.append(row)
    return pd.DataFrame(rows)


def drift_tests(live: pd.DataFrame, profile: dict[str, Any], params: Params) -> list[drift.Finding]:
    """Class mix, confidence, each image statistic, the low-confidence and unsure shares, undecodable inputs,
    and where the version has an embedder, the embeddings (MMD against the val images') and the share of novel
    images."""
    m = params.monitor
    decoded = live[live["decoded"]]
    classes = len(profile["labels"])
    tests: dict[str, tuple[float, float, str]] = {}
    stat, p = drift.class_mix(decoded["class_id"].astype(int), profile["predicted"], classes)
    top = Counter(decoded["label"]).most_common(1)
    tests["class mix"] = (
        stat,
        p,
        f"most predicted: {top[0][0]} ({top[0][1] / max(len(decoded), 1):.0%})" if top else "",
    )
    stat, p = drift.two_sample(decoded["confidence"], profile["confidence"])
    tests["top-1 confidence"] = (
        stat,
        p,
        f"median {decoded['confidence'].median():.3f} vs {np.median(profile['confidence']):.3f}",
    )
    with_image = live[live["image_present"] & live["brightness"].notna()]
    for key in STATS:
        stat, p = drift.two_sample(with_image[key], profile["stats"][key])
        tests[key] = (stat, p, f"median {with_image[key].median():.3g} vs {np.median(profile['stats'][key]):.3g}")
    low_ref = float(np.mean(np.asarray(profile["confidence"]) < m.low_confidence))
    low = int((decoded["confidence"] < m.low_confidence).sum())
    share, p = drift.share_above(low, len(decoded), low_ref)
    tests["low-confidence share"] = (share, p, f"{share:.1%} below {m.low_confidence} vs {low_ref:.1%}")
    if profile.get("thresholds"):  # profiles of versions from before the unsure route have none
        tests["unsure share"] = _unsure_share(decoded, profile)
    if "embedding" in profile:  # nor of versions from before the embedder
        seen = decoded[decoded["embedding"].notna()]
        embedded = np.stack([novelty.decode(e) for e in seen["embedding"]]) if len(seen) else np.empty((0, 0))
        stat, p = drift.mmd(embedded, profile["embedding"]["val"], m.permutations)
        detail = f"MMD² of {len(seen)} embeddings against {profile['images']} val images'"
        tests["embedding drift"] = (stat, p, detail)
        tests["novel images share"] = _novel_share(seen, profile)
    bad = int((~live["decoded"]).sum())
    share, p = drift.share_above(bad, len(live), m.max_undecodable_share)
    tests["undecodable inputs"] = (
        share,
        p,
        f"{bad} of {len(live)} ({share:.1%}; tolerated {m.max_undecodable_share:.1%})",
    )
    return drift.findings(tests, m.alpha)


def _unsure_share(decoded: pd.DataFrame, profile: dict[str, Any]) -> tuple[float, float, str]:
    """Are more live answers `unsure` (confidence below the class's threshold) than on the val set?"""
    thresholds = np.asarray(profile["thresholds"], dtype=float)
    reference = np.asarray(profile["confidence"]) < thresholds[np.asarray(profile["predicted"], dtype=int)]
    live = decoded["confidence"].to_numpy(float) < thresholds[decoded["class_id"].to_numpy(int)]
    share, p = drift.share_above(int(live.sum()), len(live), float(reference.mean()) if len(reference) else 0.0)
    return share, p, f"{share:.1%} unsure vs {reference.mean():.1%} on val"


def _novel_share(seen: pd.DataFrame, profile: dict[str, Any]) -> tuple[float, float, str]:
    """Are more live images novel (a novelty score above the val images' 99th percentile) than val images are
    (about 1%: exactly, the share of the val set above its own percentile)?"""
    p99 = float(profile["embedding"]["novelty_p99"])
    reference = float(np.mean(np.asarray(profile["embedding"]["val_novelty"]) > p99))
    share, p = drift.share_above(int((seen["novelty"] > p99).sum()), len(seen), reference)
    return share, p, f"{share:.1%} above the val images' 99th percentile of novelty ({p99:.3f})"


@dataclass(frozen=True)
class ShadowAgreement:
    """How often a shadow run's version gave the champion's class, with a 95% (Wilson) interval, and the flips
    (champion class -> shadow class) where they differed, most frequent first."""

    version: str
    requests: int
    agreement: float
    low: float
    high: float
    flips: dict[str, int]

    def text(self) -> str:
        flips = ", ".join(f"{k} {v}" for k, v in list(self.flips.items())[:5]) or "none"
        return (
            f"shadow version {self.version} agreed on {self.agreement:.1%} of {self.requests} requests "
            f"(95% interval {self.low:.1%} to {self.high:.1%}); flips: {flips}"
        )


def shadow_agreement(samples: list[Sample], labels: list[str]) -> ShadowAgreement | None:
    """The latest shadow run's agreement with the served version on the requests both classified."""
    from scipy.stats import binomtest

    both = [s for s in samples if s.label is not None and s.shadow_label is not None]
    if not both:
        return None
    version = both[-1].shadow_version or ""
    both = [s for s in both if s.shadow_version == version]
    agreed = sum(s.label == s.shadow_label for s in both)
    interval = binomtest(agreed, len(both)).proportion_ci(0.95, method="wilson")
    flips = Counter(f"{labels[s.label]} -> {labels[s.shadow_label]}" for s in both if s.label != s.shadow_label)
    share = agreed / len(both)
    return ShadowAgreement(version, len(both), share, interval.low, interval.high, dict(flips.most_common()))


def served_window(params: Params) -> tuple[Window, str, list[Sample]]:
    """The captured window, the version that served last, and its samples (at least monitor.min_samples)."""
    m = params.monitor
    window = read_window(params.publish.capture_dir, m.window_hours)
    if not window.samples:
        raise InputError(
            f"{params.publish.capture_dir}: no captured requests in the last {m.window_hours:g} h "
            f"({window.skipped} unreadable records skipped); send traffic to the <model>_bytes endpoint with "
            "publish.capture_rate above 0, or widen monitor.window_hours"
        )
    version = window.samples[-1].version
    served = [s for s in window.samples if s.version == version]
    if len(served) < m.min_samples:
        raise InputError(
            f"only {len(served)} captured requests of version {version} in the last {m.window_hours:g} h; "
            f"monitor.min_samples is {m.min_samples}: wait for more traffic, raise publish.capture_rate, or lower "
            "monitor.min_samples"
        )
    return window, version, served
