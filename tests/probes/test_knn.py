"""Weighted cosine k-NN against a computation by hand."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from ssl_dr.probes.knn import knn_probabilities

TRAIN = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
GRADES = np.array([0, 1, 1, 2])


def test_three_neighbours_vote_with_exp_similarity_over_temperature():
    # query (2, 0): cosines 1, 0, 1/sqrt(2), -1 -> the top 3 are points 0, 2, 1 (grades 0, 1, 1)
    w0, w2, w1 = math.exp(1 / 0.5), math.exp(1 / math.sqrt(2) / 0.5), math.exp(0 / 0.5)
    total = w0 + w2 + w1
    probs = knn_probabilities(TRAIN, GRADES, np.array([[2.0, 0.0]]), k=3, temperature=0.5)
    np.testing.assert_allclose(probs, [[w0 / total, (w2 + w1) / total, 0, 0, 0]])


def test_cosine_similarity_ignores_the_features_scale():
    query = np.array([[0.3, 0.8], [-1.0, 0.2]])
    np.testing.assert_allclose(knn_probabilities(TRAIN * 10, GRADES, query * 0.1, k=2),
                               knn_probabilities(TRAIN, GRADES, query, k=2))


def test_a_k_beyond_the_training_slice_uses_all_of_it_and_says_so_once(caplog):
    query = np.array([[2.0, 0.0], [0.0, 3.0]])
    with caplog.at_level(logging.INFO, logger="ssl_dr.probes.knn"):
        probs = knn_probabilities(TRAIN, GRADES, query, k=20, temperature=0.07)
    assert len([r for r in caplog.records if "every one of them votes" in r.getMessage()]) == 1
    np.testing.assert_allclose(probs, knn_probabilities(TRAIN, GRADES, query, k=4, temperature=0.07))
    assert probs[:, 2].min() > 0 and (probs[:, 3:] == 0).all()  # grade 2's one image votes; grades 3-4 are absent


def test_bad_parameters_fail_with_a_clear_line():
    with pytest.raises(ValueError, match="k >= 1"):
        knn_probabilities(TRAIN, GRADES, TRAIN, k=0)
    with pytest.raises(ValueError, match="at least one training image"):
        knn_probabilities(TRAIN[:0], GRADES[:0], TRAIN)
