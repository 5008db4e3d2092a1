"""Reference profiles: what normal traffic looks like for a model version, recorded on its val set at export.

A profile holds, per val image, the class the exported model predicts, its top-1 confidence and the image
statistics the monitor compares (`images.image_stats`), plus the labels and the per-class thresholds of the
"unsure" answer (so the monitor compares the unsure share with the val set's), and what the embedding tests
need: the embeddings file beside it (`novelty`: train and val embeddings), their dimension, the k of the
novelty score and the val images' 99th percentile of it. It travels with the version:
export writes it, register stores it in the registry, publish puts it beside the model.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from components.data.images import STATS, image_stats


def reference_profile(
    image_paths: list[str],
    probabilities: np.ndarray,
    labels: list[str],
    thresholds: list[float],
    embedding: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The profile of a model on its val images (`probabilities` of the exported model, in the same order)."""
    stats = [image_stats(path) for path in image_paths]
    return {
        "labels": labels,
        "thresholds": thresholds,
        "images": len(image_paths),
        "predicted": probabilities.argmax(1).tolist(),
        "confidence": [round(float(p), 6) for p in probabilities.max(1)],
        # Exact values: rounded ones would differ from the live ones of the very same images, and a two-sample
        # test sees identical constant values (every photo 4:3) as completely separated.
        "stats": {key: [float(s[key]) for s in stats if s["decoded"]] for key in STATS},
        "formats": dict(Counter(s.get("format") for s in stats)),
        "grayscale_share": float(np.mean([bool(s.get("grayscale")) for s in stats])) if stats else 0.0,
        **({"embedding": embedding} if embedding else {}),
    }
