"""What the model sees, per request: its embedding, stored compactly, and a novelty score against the training set.

The novelty score of an image is one minus the cosine similarity of its embedding to its k-th nearest
training embedding (deep nearest neighbours, Sun et al. 2022): 0 for an image like many training images,
towards 1 (at most 2) for one unlike any. Embeddings are unit vectors (`deployable.Embedder`), so a matrix
product gives every similarity at once. Imports only numpy and the standard library, so that Triton's python
backend runs it beside `classify_bytes.py`.
"""

from __future__ import annotations

import base64

import numpy as np

TRAIN, VAL, VAL_NOVELTY, NEIGHBOURS = "train", "val", "val_novelty", "neighbours"
CHUNK = 1024  # rows scored at once: bounds the similarity matrix to CHUNK x training images


def novelty(embeddings: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """The novelty score of each row of `embeddings` [n, dim] against the training embeddings [m, dim]."""
    train = np.asarray(train, dtype=np.float32)
    k = max(1, min(k, len(train)))
    scores = []
    for start in range(0, len(embeddings), CHUNK):
        similarity = np.asarray(embeddings[start : start + CHUNK], dtype=np.float32) @ train.T
        kth = similarity.max(axis=1) if k == 1 else -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
        scores.append(1.0 - kth)
    return np.concatenate(scores) if scores else np.empty(0, np.float32)


def describe(embeddings: list[np.ndarray], train: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Each embedding as a capture record holds it: encoded (`encode`), with its novelty score; the scores of
    all of them in one product."""
    scores = novelty(np.stack(embeddings), train, k)
    return [(encode(e), float(s)) for e, s in zip(embeddings, scores, strict=True)]


def encode(embedding: np.ndarray) -> str:
    """One embedding as text for a capture record: float16, little-endian, base64 (dim x 2 bytes, x 4/3)."""
    return base64.b64encode(np.asarray(embedding, dtype="<f2").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    """An embedding that `encode` wrote, as float32."""
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f2").astype(np.float32)


def load_reference(path: str) -> tuple[np.ndarray, int]:
    """The training embeddings (float32) and k of an embeddings file (export writes it beside the model)."""
    with np.load(path) as data:
        return data[TRAIN].astype(np.float32), int(data[NEIGHBOURS])
