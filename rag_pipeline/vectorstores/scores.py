"""The one meaning of ``metadata['score']`` for a dense hit, whatever index found it."""

from __future__ import annotations

import numpy as np


def similarity(distance: str, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Scores of every (query, vector) pair: cosine; dot product for ip; 1 - d/2 for squared l2
    (which for unit vectors is the cosine)."""
    queries = np.asarray(queries, dtype=np.float32)
    vectors = np.asarray(vectors, dtype=np.float32)
    if distance == "cosine":
        queries = normalized(queries)
        vectors = normalized(vectors)
    products = queries @ vectors.T
    if distance == "l2":
        squared = (queries**2).sum(1)[:, None] + (vectors**2).sum(1)[None, :] - 2 * products
        return 1.0 - squared / 2.0
    return products


def normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
