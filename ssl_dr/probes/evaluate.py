"""One probe on one split, end to end: frozen features of the split's images -> linear probe or k-NN -> the
fine-tune's ``val/*`` and ``test/*`` metric keys and its ``test_predictions.csv``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssl_dr.data.records import Record
from ssl_dr.probes.knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_probabilities
from ssl_dr.probes.linear import DEFAULT_C_GRID, DEFAULT_MAX_ITER, fit_linear_probe
from ssl_dr.probes.scores import probe_scores, write_predictions
from ssl_dr.probes.store import FeatureSet
from ssl_dr.run_contract import EXTERNAL_PREDICTIONS, TEST_PREDICTIONS, VAL_PREDICTIONS

PROTOCOLS = ("linear", "knn")
EXTERNAL = "external"
"""The external set's stage: its metrics keys' prefix (``external/qwk``), as the fine-tune's
(``ssl_dr.training.external``, a layer above this one)."""


def evaluate_probe(protocol: str, features: FeatureSet, train: Sequence[Record], val: Sequence[Record],
                   test: Sequence[Record], out_dir: str | Path | None = None, c_grid: Sequence[float] = DEFAULT_C_GRID,
                   max_iter: int = DEFAULT_MAX_ITER, k: int = DEFAULT_K,
                   temperature: float = DEFAULT_TEMPERATURE,
                   external: tuple[Sequence[Record], FeatureSet] | None = None) -> dict[str, Any]:
    """Fit ``protocol`` (``linear``: C chosen on ``val``; ``knn``: ``train`` votes) and score val and test (and
    ``external``: another data set's records and features, graded by the same fitted probe, ``external/*``).

    Returns ``probe_scores`` of both slices, ``val/qwk_best`` (the chosen validation QWK, as the fine-tune reports
    it), ``probe/protocol``, ``probe/features`` (the feature entry's key), ``probe/seconds``, and ``probe/C`` with
    ``probe/val_qwk_by_C`` (linear) or ``probe/k`` and ``probe/temperature`` (knn). With ``out_dir``, writes
    ``out_dir/val_predictions.csv``, ``test_predictions.csv`` (and ``external_predictions.csv``).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"probe protocol={protocol!r} must be one of {', '.join(PROTOCOLS)}")
    started = time.time()
    train_x, val_x = features.rows(train), features.rows(val)
    train_y, val_y = (np.array([r.grade for r in part], dtype=np.int64) for part in (train, val))
    record: dict[str, Any] = {"probe/protocol": protocol, "probe/features": features.key}
    if protocol == "linear":
        probe = fit_linear_probe(train_x, train_y, val_x, val_y, c_grid=c_grid, max_iter=max_iter)
        val_probs, predict = probe.val_probs, probe.predict
        record["probe/C"] = probe.C
        record["probe/val_qwk_by_C"] = {f"{c:g}": q for c, q in probe.val_qwk.items()}
    else:
        def predict(x: np.ndarray) -> np.ndarray:
            return knn_probabilities(train_x, train_y, x, k=k, temperature=temperature)

        val_probs = predict(val_x)
        record.update({"probe/k": min(k, len(train)), "probe/temperature": temperature})
    record.update(probe_scores("val", val_y, val_probs))
    record["val/qwk_best"] = record["val/qwk"]
    if out_dir is not None:  # what the operating point and the temperature are fitted on (ssl_dr.models.screening)
        write_predictions(Path(out_dir) / VAL_PREDICTIONS, val, val_probs)
    # read once, after the choice: the test fold, then the external set, by the same fitted probe
    graded = [("test", test, features, TEST_PREDICTIONS)]
    if external is not None:
        graded.append((EXTERNAL, external[0], external[1], EXTERNAL_PREDICTIONS))
    for prefix, records, source, file_name in graded:
        probs = predict(source.rows(records))
        record.update(probe_scores(prefix, [r.grade for r in records], probs))
        if out_dir is not None:
            write_predictions(Path(out_dir) / file_name, records, probs)
    if external is not None:
        record[f"{EXTERNAL}/num_images"] = len(external[0])
    record["probe/seconds"] = round(time.time() - started, 2)
    return record
