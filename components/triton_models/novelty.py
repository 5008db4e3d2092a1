"""What the model sees, per request: its embedding, stored compactly, and a novelty score against the training set.

An embedding is the model's pooled penultimate features (the embedder's second output), multiplied by a fixed
random Gaussian matrix (`projection`: seeded, stored in `embeddings.npz`) and normalized to unit length. The
random projection keeps distances between images close to those between their full features (Johnson and
Lindenstrauss) in the `export.embedding_dim` numbers that a capture record stores. It runs here, on every
sample the capture gathered at once, rather than in the served graph: one matrix product for a batch costs
less than reading the matrix once per request.

The novelty score of an image is one minus the cosine similarity of its embedding to its k-th nearest
training embedding (deep nearest neighbours, Sun et al. 2022): 0 for an image like many training images,
towards 1 (at most 2) for one unlike any. Embeddings are unit vectors, so a matrix product gives every
similarity at once. Imports only numpy and the standard library, so that Triton's python backend runs it
beside `classify_bytes.py`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

TRAIN, VAL, VAL_NOVELTY, NEIGHBOURS, PROJECTION = "train", "val", "val_novelty", "neighbours", "projection"
CHUNK = 1024  # rows scored at once: bounds the similarity matrix to CHUNK x training images
PROJECTION_SEED = 0  # every export of a model gets the same matrix


def projection(width: int, dim: int) -> np.ndarray:
    """The fixed random projection of `width` features to `dim` numbers (float32 [width, dim]); empty [width, 0]
    when `dim` is at least `width`: the features themselves are kept."""
    if dim >= width:
        return np.empty((width, 0), np.float32)
    matrix = np.random.default_rng(PROJECTION_SEED).standard_normal((width, dim)) / np.sqrt(dim)
    return matrix.astype(np.float32)


def project(features: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Unit-length embeddings [n, dim] of pooled features [n, width]: projected by `matrix` (an empty one keeps
    them), then normalized."""
    rows = np.asarray(features, dtype=np.float32)
    if matrix.size:
        rows = rows @ matrix
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Reference:
    """What the capture scores against, from a version's embeddings file: the training embeddings, k, and the
    projection of its embedder's features."""

    train: np.ndarray
    neighbours: int
    projection: np.ndarray


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


def describe(features: list[np.ndarray], reference: Reference) -> list[tuple[str, float]]:
    """Each image's pooled features as a capture record holds them: its embedding, encoded (`encode`), with its
    novelty score; all of them projected and scored in one product each."""
    embeddings = project(np.stack(features), reference.projection)
    scores = novelty(embeddings, reference.train, reference.neighbours)
    return [(encode(e), float(s)) for e, s in zip(embeddings, scores, strict=True)]


def encode(embedding: np.ndarray) -> str:
    """One embedding as text for a capture record: float16, little-endian, base64 (dim x 2 bytes, x 4/3)."""
    return base64.b64encode(np.asarray(embedding, dtype="<f2").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    """An embedding that `encode` wrote, as float32."""
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f2").astype(np.float32)


def load_reference(path: str) -> Reference:
    """The reference of an embeddings file (export writes it beside the model). A file from before the
    projection moved here has none: its embedder's output is already the embedding."""
    with np.load(path) as data:
        train = data[TRAIN].astype(np.float32)
        matrix = data[PROJECTION] if PROJECTION in data else np.empty((train.shape[1], 0), np.float32)
        return Reference(train, int(data[NEIGHBOURS]), matrix.astype(np.float32))
