"""One probe on one split, end to end on a tiny cache: the fine-tune's keys, the probe's own, the prediction file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssl_dr.data.records import Record
from ssl_dr.probes.classical import extract_classical
from ssl_dr.probes.evaluate import evaluate_probe
from ssl_dr.probes.knn import knn_probabilities
from ssl_dr.probes.linear import fit_linear_probe
from ssl_dr.probes.scores import probe_scores
from ssl_dr.run_contract import TEST_PREDICTIONS


@pytest.fixture
def split(tiny_cache, tmp_path):
    cache, records = tiny_cache
    graded = [Record(r.id_code, r.path, grade) for r, grade in zip(records, [0, 1, 2, 0, 1, 2, 0, 2], strict=True)]
    return extract_classical(cache, tmp_path), graded[:4], graded[4:6], graded[6:]


def test_the_linear_probe_job_scores_what_the_probe_predicts(split, tmp_path):
    features, train, val, test = split
    record = evaluate_probe("linear", features, train, val, test, out_dir=tmp_path / "run", c_grid=(0.01, 1.0))
    probe = fit_linear_probe(*(a for part in (train, val) for a in (features.rows(part), [r.grade for r in part])),
                             features.rows(test), c_grid=(0.01, 1.0))
    expected = probe_scores("test", [r.grade for r in test], probe.test_probs)
    assert {k: record[k] for k in expected if k != "test/confusion"} == pytest.approx(
        {k: v for k, v in expected.items() if k != "test/confusion"}, nan_ok=True)
    assert record["probe/C"] == probe.C and record["val/qwk_best"] == record["val/qwk"]
    assert set(record["probe/val_qwk_by_C"]) == {"0.01", "1"}
    assert record["probe/features"] == features.key and record["probe/protocol"] == "linear"
    table = pd.read_csv(tmp_path / "run" / TEST_PREDICTIONS)
    assert list(table["id_code"]) == [r.id_code for r in test]


def test_the_knn_job_votes_with_the_training_slice(split):
    features, train, val, test = split
    record = evaluate_probe("knn", features, train, val, test, k=3, temperature=0.1)
    probs = knn_probabilities(features.rows(train), np.array([r.grade for r in train]), features.rows(val), k=3,
                              temperature=0.1)
    assert record["val/confusion"] == probe_scores("val", [r.grade for r in val], probs)["val/confusion"]
    assert record["probe/k"] == 3 and record["probe/temperature"] == 0.1
    assert evaluate_probe("knn", features, train, val, test, k=50)["probe/k"] == len(train)


def test_an_unknown_protocol_names_the_choices(split):
    with pytest.raises(ValueError, match="must be one of linear, knn"):
        evaluate_probe("finetune", *split)


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_the_test_fold_graded_as_an_external_set_gives_the_test_scores(split, tmp_path, protocol):
    """The external path reads the fitted probe and the features exactly as the test path: given the test fold (in
    another order) as the external set, every external figure and prediction is the test fold's."""
    features, train, val, test = split
    record = evaluate_probe(protocol, features, train, val, test, out_dir=tmp_path, c_grid=(0.01, 1.0), k=3,
                            external=(test[::-1], features))
    for name in ("qwk", "acc", "auroc_referable", "loss", "grades_predicted"):
        assert record[f"external/{name}"] == pytest.approx(record[f"test/{name}"], nan_ok=True), name
    assert record["external/confusion"] == record["test/confusion"]
    assert record["external/num_images"] == len(test)
    tested = pd.read_csv(tmp_path / TEST_PREDICTIONS).set_index("id_code")
    graded = pd.read_csv(tmp_path / "external_predictions.csv").set_index("id_code").loc[tested.index]
    assert np.allclose(graded.to_numpy(), tested.to_numpy())
