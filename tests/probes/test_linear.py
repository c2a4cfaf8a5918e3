"""The linear probe is scikit-learn's own StandardScaler + LogisticRegression, its C chosen on validation only."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ssl_dr.probes.linear import fit_linear_probe

GRID = (1e-3, 1e-1, 10.0)


def features(n: int, seed: int, grades=range(5), spread: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy clusters, one per grade, in 6 dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.choice(list(grades), size=n)
    centres = np.random.default_rng(99).normal(0, 1, (5, 6))
    return centres[y] + rng.normal(0, spread, (n, 6)), y


def sklearn_fit(x, y, C):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)).fit(x, y)


def test_the_probe_is_sklearns_fit_with_the_c_that_validation_chose():
    (tx, ty), (vx, vy), (sx, _) = features(120, 0), features(60, 1), features(40, 2)
    probe = fit_linear_probe(tx, ty, vx, vy, sx, c_grid=GRID)
    curve = {C: cohen_kappa_score(vy, sklearn_fit(tx, ty, C).predict(vx), weights="quadratic") for C in GRID}
    np.testing.assert_allclose([probe.val_qwk[C] for C in GRID], [curve[C] for C in GRID])
    best = max(GRID, key=lambda C: (curve[C], -C))  # best QWK, ties to the smaller C
    assert probe.C == best
    model = sklearn_fit(tx, ty, best)
    np.testing.assert_allclose(probe.val_probs, model.predict_proba(vx), atol=1e-8)
    np.testing.assert_allclose(probe.test_probs, model.predict_proba(sx), atol=1e-8)


def test_the_test_slice_cannot_move_the_choice():
    (tx, ty), (vx, vy) = features(120, 0), features(60, 1)
    with_test = fit_linear_probe(tx, ty, vx, vy, features(40, 2)[0], c_grid=GRID)
    other_test = fit_linear_probe(tx, ty, vx, vy, features(40, 3)[0] * 100, c_grid=GRID)
    assert with_test.C == other_test.C and with_test.val_qwk == other_test.val_qwk
    np.testing.assert_array_equal(with_test.val_probs, other_test.val_probs)


def test_a_tie_goes_to_the_stronger_regularisation():
    (tx, ty), (vx, vy) = features(100, 0, spread=0.01), features(50, 1, spread=0.01)  # every C grades perfectly
    probe = fit_linear_probe(tx, ty, vx, vy, c_grid=(10.0, 1.0, 0.1))
    assert set(probe.val_qwk.values()) == {1.0}
    assert probe.C == 0.1 and probe.test_probs is None


def test_a_grade_missing_from_the_training_slice_gets_probability_zero():
    (tx, ty), (vx, vy) = features(80, 0, grades=(0, 1, 2, 4)), features(40, 1)
    probe = fit_linear_probe(tx, ty, vx, vy, vx, c_grid=GRID)
    assert probe.val_probs.shape == (40, 5)
    assert (probe.val_probs[:, 3] == 0).all() and (probe.val_probs[:, [0, 1, 2, 4]] > 0).all()
    np.testing.assert_allclose(probe.val_probs.sum(axis=1), 1)


def test_one_grade_in_the_training_slice_predicts_it_with_certainty():
    (tx, _), (vx, vy) = features(10, 0), features(8, 1)
    probe = fit_linear_probe(tx, np.full(10, 2), vx, vy, vx[:3], c_grid=GRID)
    assert probe.C is None
    np.testing.assert_array_equal(probe.test_probs, np.tile(np.eye(5)[2], (3, 1)))
