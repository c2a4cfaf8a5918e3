"""Weighted cosine k-NN on frozen features, as DINO's ``eval_knn.py`` and solo-learn's ``knn.py`` score a
representation: L2-normalised features, the ``k`` most similar training images by cosine similarity, each voting
for its grade with weight ``exp(similarity / temperature)``; the per-grade vote sums, normalised, are the
query's grade probabilities (argmax: DINO's prediction).
"""

from __future__ import annotations

import logging

import numpy as np

from ssl_dr.data.records import NUM_GRADES

log = logging.getLogger(__name__)

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07
QUERY_CHUNK = 1024
"""Queries scored at once: bounds the (chunk, training images) similarity matrix in memory."""


def _normalised(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def knn_probabilities(train_x: np.ndarray, train_grades: np.ndarray, query_x: np.ndarray, k: int = DEFAULT_K,
                      temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """``(Q, 5)`` grade probabilities of the queries from their ``k`` nearest training images (all of them, said
    once in the log, when the training slice has fewer than ``k``). Grades absent from the training slice get 0."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k-NN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    grades = np.asarray(train_grades, dtype=np.int64)
    if len(grades) == 0:
        raise ValueError("k-NN needs at least one training image")
    if k > len(grades):
        log.info("k-NN: k=%d but the training slice holds %d images; every one of them votes", k, len(grades))
        k = len(grades)
    train, query = _normalised(train_x), _normalised(query_x)
    one_hot = np.eye(NUM_GRADES)[grades]
    out = np.zeros((len(query), NUM_GRADES))
    for start in range(0, len(query), QUERY_CHUNK):
        sims = query[start:start + QUERY_CHUNK] @ train.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        # exp(s / T) normalised per query: shifting by the row's maximum changes nothing but avoids overflow
        weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / temperature)
        votes = np.einsum("qk,qkg->qg", weights, one_hot[top])
        out[start:start + QUERY_CHUNK] = votes / votes.sum(axis=1, keepdims=True)
    return out
