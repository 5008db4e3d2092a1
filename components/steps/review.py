"""review: a labelling queue from captured traffic, for a person to fill in.

The least confident requests come first, then those that contribute most to a drift, each image once.
Writes `review.output`: review.csv (file, predicted, confidence, novelty, why it is queued and an empty
`label` column), index.html (a contact sheet to open in a browser), label_studio_tasks.json with the
predictions as pre-annotations and label_studio_config.xml; the images themselves are copied under images/,
thumbnails under thumbs/ and, with `review.heatmaps`, each image's class-activation overlay under heatmaps/
(shown in the sheet and in Label Studio beside the image).
"""

from __future__ import annotations

import csv
import html
import io
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.config import Params
from components.core.fsutil import atomic_write_json, atomic_write_text, staged_dir
from components.core.locks import locked
from components.core.results import StepResult
from components.data.images import STATS
from components.model.contract import WEIGHTS_FILE
from components.traffic.drift import class_shares
from components.traffic.windows import drift_tests, live_table, read_profile, reference_files, served_window

log = logging.getLogger(__name__)

QUEUE_FILE, SHEET_FILE = "review.csv", "index.html"
TASKS_FILE, LABEL_CONFIG_FILE = "label_studio_tasks.json", "label_studio_config.xml"
COLUMNS = ["file", "predicted", "confidence", "novelty", "why", "label"]
THUMB = 160


def _drift_contribution(live: pd.DataFrame, profile: dict[str, Any], drifted: list[str]) -> pd.Series:
    """How far each request pushes the drifted checks: distance from the reference median in reference IQRs
    for an image statistic or the confidence, and the over-representation of its class for the class mix."""
    score = pd.Series(0.0, index=live.index)
    for check in drifted:
        if check in STATS or check == "top-1 confidence":
            reference = np.asarray(profile["confidence"] if check == "top-1 confidence" else profile["stats"][check])
            spread = max(float(np.subtract(*np.percentile(reference, [75, 25]))), 1e-6)
            column = "confidence" if check == "top-1 confidence" else check
            score += ((live[column] - float(np.median(reference))).abs() / spread).fillna(0.0)
        elif check == "class mix":
            classes = len(profile["labels"])
            observed = class_shares(live["class_id"].dropna(), classes)
            excess = pd.Series(np.clip(observed - class_shares(profile["predicted"], classes), 0, None))
            score += live["class_id"].map(excess).fillna(0.0)
    return score


def review_queue(
    live: pd.DataFrame, profile: dict[str, Any], drifted: list[str], size: int, low: float
) -> pd.DataFrame:
    """The queue: requests where a shadow run's version disagreed with the served one (the images most worth
    labelling), least confident first; then requests below confidence `low`, least confident first; then novel
    images (a novelty score above the val images' 99th percentile), most novel first; then the largest drift
    contributors; each image (sha) once, only images still on disk, at most `size` rows. Column `why` says
    which of these put each image in the queue."""
    candidates = live[live["decoded"] & live["image_present"]].drop_duplicates("sha").copy()
    candidates["contribution"] = _drift_contribution(candidates, profile, drifted)
    candidates["novelty"] = candidates.get("novelty", pd.Series(np.nan, index=candidates.index)).astype(float)
    shadow = candidates.get("shadow_class_id", pd.Series(None, index=candidates.index, dtype=object))
    disagree = candidates[shadow.notna() & (shadow != candidates["class_id"])].sort_values("confidence", kind="stable")
    left = candidates.drop(disagree.index)
    unsure = left[left["confidence"] < low].sort_values("confidence", kind="stable")
    left = left.drop(unsure.index)
    p99 = profile.get("embedding", {}).get("novelty_p99", np.inf)  # no novelty scores: nothing is novel
    novel = left[left["novelty"] > p99].sort_values("novelty", ascending=False, kind="stable")
    # Without a drift every contribution is 0, and the order is by confidence alone.
    rest = left.drop(novel.index).sort_values(["contribution", "confidence"], ascending=[False, True], kind="stable")
    reasons = ["shadow disagrees", f"confidence below {low:g}", "novel", "drift" if drifted else "confidence"]
    groups = [g.assign(why=why) for g, why in zip([disagree, unsure, novel, rest], reasons, strict=True)]
    return pd.concat(groups).head(size)


def _number(value: float | None) -> str:
    """A score for the queue file: four decimals, or empty where there is none."""
    return "" if value is None or pd.isna(value) else f"{value:.4f}"


def _thumbnail(src: Path, dst: Path) -> None:
    from PIL import Image, ImageOps

    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        im.save(buffer, format="PNG")
    dst.write_bytes(buffer.getvalue())


def _sheet(rows: list[dict[str, Any]], title: str) -> str:
    """A static contact sheet: each image's thumbnail, its predicted class and confidence, and its file."""
    cards = "\n".join(
        f'<figure><img src="{html.escape(r["thumb"])}" alt="{html.escape(r["file"])}" width="{THUMB}">'
        + (
            f'<img class="heatmap" src="{html.escape(r["heatmap"])}" alt="where the model looked" width="{THUMB}">'
            if "heatmap" in r
            else ""
        )
        + f"<figcaption><b>{html.escape(str(r['predicted']))}</b> {r['confidence']:.3f} ({html.escape(r['why'])})"
        f"<br><code>{html.escape(r['file'])}</code></figcaption></figure>"
        for r in rows
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} figure{{display:inline-block;margin:.4em;width:{THUMB}px;
vertical-align:top;font-size:12px}} img{{background:#eee}} code{{word-break:break-all}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Each image, and where shown beside it, where the model looked for the class it predicted (Grad-CAM: red
raised the class's score). Fill in the <code>label</code> column of {QUEUE_FILE}, then run
<code>sortflow dataset add-reviewed {QUEUE_FILE}</code>.</p>
{cards}
<script>window.addEventListener("load", () => {{
  const shown = [...document.images].filter(i => i.naturalWidth > 0);
  document.body.dataset.thumbnails = shown.filter(i => !i.classList.contains("heatmap")).length;
  document.body.dataset.heatmaps = shown.filter(i => i.classList.contains("heatmap")).length;
}});</script>
</body></html>
"""


def _label_studio(rows: list[dict[str, Any]], labels: list[str], model: str) -> tuple[list[dict], str]:
    """Label Studio tasks with the predictions as pre-annotations, and the labelling config they go with."""
    tasks = [
        {
            "data": {
                "image": f"/data/local-files/?d={r['abs_file'].lstrip('/')}",
                "sortflow_file": r["file"],
                **({"heatmap": f"/data/local-files/?d={r['abs_heatmap'].lstrip('/')}"} if "heatmap" in r else {}),
            },
            "predictions": [
                {
                    "model_version": model,
                    "score": r["confidence"],
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": [r["predicted"]]},
                        }
                    ],
                }
            ],
        }
        for r in rows
    ]
    choices = "\n".join(f'    <Choice value="{html.escape(label, quote=True)}"/>' for label in labels)
    heatmap = '  <Image name="heatmap" value="$heatmap"/>\n' if rows and "heatmap" in rows[0] else ""
    config = (
        f'<View>\n  <Image name="image" value="$image"/>\n{heatmap}'
        f'  <Choices name="label" toName="image" choice="single">\n{choices}\n  </Choices>\n</View>\n'
    )
    return tasks, config


@dataclass(frozen=True)
class ReviewResult(StepResult):
    output: str
    images: int
    version: str
    drifted: list[str]
    window_samples: int
    queue: str  # review.csv
    sheet: str  # the contact sheet

    def text(self) -> str:
        return (
            f"Review queue: {self.images} images of {self.window_samples} captured requests "
            f"({', '.join(self.drifted) or 'no drift'}): {self.queue}, contact sheet {self.sheet}\n"
            f"Fill in the label column, then: sortflow dataset add-reviewed {self.queue}"
        )


def _copy_images(queue: pd.DataFrame, stage: Path, out: Path) -> list[dict[str, Any]]:
    """Each queued image copied under images/ with a thumbnail under thumbs/; a row per image for the files."""
    (stage / "images").mkdir()
    (stage / "thumbs").mkdir()
    rows = []
    for r in queue.to_dict("records"):
        src = Path(r["file"])
        shutil.copyfile(src, stage / "images" / src.name)
        _thumbnail(src, stage / "thumbs" / f"{r['sha']}.png")
        rows.append(
            {
                "file": f"images/{src.name}",
                "abs_file": str((out / "images" / src.name).resolve()),
                "thumb": f"thumbs/{r['sha']}.png",
                "sha": r["sha"],
                "class_id": int(r["class_id"]),
                "predicted": r["label"],
                "confidence": float(r["confidence"]),
                "novelty": r.get("novelty"),
                "why": r["why"],
            }
        )
    return rows


def _weights(files: dict[str, Path], version: str) -> dict[str, Any] | None:
    """The served version's weights for the heatmaps; None, with a warning, for a version exported without."""
    from components.model.checkpoints import load_checkpoint

    if not files[WEIGHTS_FILE].is_file():
        log.warning("Version %s has no %s (exported before heatmaps): the sheet shows none", version, WEIGHTS_FILE)
        return None
    return load_checkpoint(files[WEIGHTS_FILE], "the served version's weights")


def _heatmaps(ckpt: dict[str, Any], rows: list[dict[str, Any]], stage: Path, out: Path) -> None:
    """Each row's Grad-CAM overlay for its predicted class under heatmaps/ (row key `heatmap`), drawn with the
    weights of checkpoint `ckpt`."""
    from components.model.heatmaps import Heatmaps, overlay

    heatmaps = Heatmaps(ckpt)
    (stage / "heatmaps").mkdir()
    pixels = np.stack([heatmaps.pixels(stage / r["file"]) for r in rows]) if rows else np.empty((0, 3, 1, 1))
    for r, image, found in zip(rows, pixels, heatmaps.maps(pixels, [r["class_id"] for r in rows]), strict=True):
        overlay(image, found, stage / "heatmaps" / f"{r['sha']}.png")
        r["heatmap"] = f"heatmaps/{r['sha']}.png"
        r["abs_heatmap"] = str((out / r["heatmap"]).resolve())


def _queue_file(rows: list[dict[str, Any]]) -> str:
    """review.csv: the queued images with an empty `label` column to fill in."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "confidence": f"{r['confidence']:.4f}", "novelty": _number(r["novelty"]), "label": ""})
    return table.getvalue()


@locked("review.output")
def review(params: Params) -> ReviewResult:
    """Build the review queue of the captured window (the one `sortflow monitor` checks).

    Reads publish.capture_dir and the reference profile (and weights, for the heatmaps) of the served version.
    Writes `review.output` whole (see the module docstring). Raises SortflowError when there is no capture
    folder or too few samples.
    """
    _, version, served = served_window(params)
    with reference_files(params, version) as files:  # one download, when the registry has to be asked
        profile = read_profile(files, version, params.register.model_name)
        weights = _weights(files, version) if params.review.heatmaps else None
    live = live_table(served, profile["labels"])
    drifted = [f.check for f in drift_tests(live, profile, params) if f.drift]
    queue = review_queue(live, profile, drifted, params.review.size, params.monitor.low_confidence)
    out = Path(params.review.output)
    with staged_dir(out, replace=True) as stage:
        rows = _copy_images(queue, stage, out)
        if weights is not None:
            _heatmaps(weights, rows, stage, out)
        atomic_write_text(stage / QUEUE_FILE, _queue_file(rows))
        title = f"Review queue: {params.register.model_name} version {version}, {len(rows)} images"
        atomic_write_text(stage / SHEET_FILE, _sheet(rows, title))
        tasks, config = _label_studio(rows, profile["labels"], f"{params.register.model_name}:{version}")
        atomic_write_json(stage / TASKS_FILE, tasks)
        atomic_write_text(stage / LABEL_CONFIG_FILE, config)
    log.info("Review queue of %d images in %s (%s)", len(rows), out, ", ".join(drifted) or "no drift")
    return ReviewResult(
        str(out), len(rows), version, drifted, len(served), str(out / QUEUE_FILE), str(out / SHEET_FILE)
    )
