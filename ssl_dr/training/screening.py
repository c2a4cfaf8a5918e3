"""A job's screening figures, read off its prediction files once the model is chosen (fine-tune and probes alike).

The temperature and the referable operating point are fitted on ``val_predictions.csv`` only, then applied to the
test fold and the external set, each read once; ECE per stage, bootstrap intervals of the test (and external) QWK
and referable AUROC by patient, and a reliability diagram, ROC and PR curves per stage beside the run. A fine-tune
stores the temperature and the threshold in ``checkpoints/best.ckpt`` so ``predict`` applies exactly them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ssl_dr.data.records import NUM_GRADES, Record
from ssl_dr.errors import ConfigError
from ssl_dr.models.screening import (
    at_threshold,
    bootstrap_intervals,
    calibration_errors,
    choose_threshold,
    fit_temperature,
    nll,
    referable_target,
    reliability_bins,
    temper,
)
from ssl_dr.run_contract import (
    BEST_CHECKPOINT,
    CHECKPOINT_SCREENING,
    EXTERNAL_PREDICTIONS,
    RELIABILITY_PLOT,
    TEST_PREDICTIONS,
    VAL_PREDICTIONS,
    write_atomic,
)
from ssl_dr.training.curves import write_curves

log = logging.getLogger(__name__)

PROBS = [f"p{k}" for k in range(NUM_GRADES)]


def check_evaluation(cfg: DictConfig) -> None:
    """``evaluation.*`` settings that would fail after training are refused now, each naming its field."""
    settings = cfg.evaluation
    referable_target(settings.referable_target)
    if settings.temperature_scaling and cfg.protocol.name == "finetune" and cfg.model.head != "classification":
        raise ConfigError(f"evaluation.temperature_scaling=true needs grade probabilities: model.head={cfg.model.head} "
                          "has none (use model.head=classification, or a probe protocol)")
    for field, value, low in (("calibration_bins", settings.calibration_bins, 1),
                              ("bootstrap.resamples", settings.bootstrap.resamples, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"evaluation.{field}={value!r} must be an integer >= {low}")
    if not 0 < float(settings.bootstrap.level) < 1:
        raise ConfigError(f"evaluation.bootstrap.level={settings.bootstrap.level} must lie in (0, 1), e.g. 0.95")


def screen(settings: DictConfig, out_dir: Path, groups: Mapping[str, Mapping[str, str]],
           stages: Sequence[str] = ("test", "external")) -> dict[str, Any]:
    """The figures of the prediction files in ``out_dir`` (``{}`` without a validation and a test file, as after
    ``trainer.fast_dev_run``) for the validation file and ``stages``; ``groups[stage]`` maps an image id to its
    patient (the bootstrap's unit)."""
    files = {"val": VAL_PREDICTIONS, "test": TEST_PREDICTIONS, "external": EXTERNAL_PREDICTIONS}
    if not all((out_dir / files[stage]).is_file() for stage in ("val", "test")):
        log.info(f"no validation or test predictions in {out_dir}: no operating point, calibration or intervals")
        return {}
    tables = {stage: pd.read_csv(out_dir / name) for stage, name in files.items()
              if (stage == "val" or stage in stages) and (out_dir / name).is_file()}
    has_probs = all(c in tables["val"].columns for c in PROBS)
    record: dict[str, Any] = {}
    temperature = None
    if settings.temperature_scaling:
        val = tables["val"]
        temperature = fit_temperature(val.grade.to_numpy(), val[PROBS].to_numpy())
        record["calibration/temperature"] = temperature
        record["val/nll_before_temperature"] = nll(val.grade.to_numpy(), val[PROBS].to_numpy())
        record["val/nll_after_temperature"] = nll(val.grade.to_numpy(), temper(val[PROBS].to_numpy(), temperature))
    referable = {stage: _referable(table, temperature) for stage, table in tables.items()}
    target = referable_target(settings.referable_target)
    threshold = math.nan
    if target is not None:
        kind, value = target
        threshold = choose_threshold(tables["val"].grade, referable["val"], kind, value)
        record.update({"operating_point/threshold": threshold, f"operating_point/{kind}_target": value})
        for stage, table in tables.items():
            figures = at_threshold(table.grade, referable[stage], threshold)
            record.update({f"{stage}/{name}_at_operating_point": v for name, v in figures.items()})
    for stage, table in tables.items():
        if has_probs:
            record.update(_calibration(stage, table, temperature, settings.calibration_bins, out_dir))
        if stage != "val":
            write_curves(out_dir, stage)  # roc_<stage>.png, pr_<stage>.png of the referable score
        if stage != "val" and settings.bootstrap.resamples:
            ids = table.id_code.astype(str)
            record.update({f"{stage}/{k}": v for k, v in bootstrap_intervals(
                table.grade, table.pred, table.referable, [groups.get(stage, {}).get(i, i) for i in ids],
                settings.bootstrap.resamples, float(settings.bootstrap.level), int(settings.bootstrap.seed)).items()})
    if settings.bootstrap.resamples:
        record.update({"bootstrap/resamples": int(settings.bootstrap.resamples),
                       "bootstrap/level": float(settings.bootstrap.level)})
    _store_in_checkpoint(out_dir / BEST_CHECKPOINT, temperature, threshold, target)
    _say(record, target)
    return record


def patients(records: Sequence[Record]) -> dict[str, str]:
    """Image id -> patient, the bootstrap's unit (the image itself where the data set names none, as IDRiD)."""
    return {r.id_code: r.group if r.group is not None else r.id_code for r in records}


def _referable(table: pd.DataFrame, temperature: float | None) -> np.ndarray:
    """The referable score the operating point thresholds: P(grade >= 2) of the (tempered) probabilities, or the
    head's own score (ordinal, regression)."""
    if temperature is not None:
        return temper(table[PROBS].to_numpy(), temperature)[:, 2:].sum(axis=1)
    return table.referable.to_numpy(dtype=float)


def _calibration(stage: str, table: pd.DataFrame, temperature: float | None, bins: int, out_dir: Path
                 ) -> dict[str, float]:
    grades, raw = table.grade.to_numpy(), table[PROBS].to_numpy()
    probs = raw if temperature is None else temper(raw, temperature)
    record = {f"{stage}/{k}": v for k, v in calibration_errors(grades, probs, bins).items()}
    if temperature is not None:
        record.update({f"{stage}/{k}_before_temperature": v for k, v in calibration_errors(grades, raw, bins).items()})
    if stage != "val" and len(grades):
        plot_reliability(out_dir / RELIABILITY_PLOT.format(stage=stage), grades, probs, bins,
                         f"{stage}: ECE {record[f'{stage}/ece']:.3f} (top grade), "
                         f"{record[f'{stage}/ece_referable']:.3f} (P(referable))"
                         + (f" (temperature {temperature:.2f})" if temperature is not None else ""))
    return record


def plot_reliability(path: Path, grades: np.ndarray, probs: np.ndarray, bins: int, title: str) -> Path:
    """Observed frequency against mean confidence per bin, for the top grade and for P(referable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    referable = probs[:, 2:].sum(axis=1)
    for ax, (confidence, hit, label) in zip(axes, (
            (probs.max(axis=1), probs.argmax(axis=1) == grades, "top grade: confidence vs accuracy"),
            (referable, grades >= 2, "P(referable) vs share referable")), strict=True):
        binned = reliability_bins(confidence, hit, bins)
        centres = (binned["edges"][:-1] + binned["edges"][1:]) / 2
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="calibrated")
        ax.bar(centres, np.nan_to_num(binned["frequency"]), width=1 / bins, alpha=0.6, edgecolor="k", label="observed")
        ax.plot(binned["confidence"], binned["frequency"], "o", color="C3", ms=4, label="bin mean")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed frequency", title=label)
        ax.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return path


def _store_in_checkpoint(ckpt: Path, temperature: float | None, threshold: float,
                         target: tuple[str, float] | None) -> None:
    """Add the fitted temperature and threshold to the chosen checkpoint (a fine-tune's; probes have none)."""
    if not ckpt.is_file():
        return
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    payload[CHECKPOINT_SCREENING] = {"temperature": temperature, "referable_threshold": threshold,
                                     "referable_target": dict([target]) if target else None}
    write_atomic(ckpt, lambda tmp: torch.save(payload, tmp))


def _say(record: dict[str, Any], target: tuple[str, float] | None) -> None:
    parts = []
    if target is not None:
        parts.append(f"operating point {target[0]} {target[1]:g} on validation (threshold "
                     f"{record['operating_point/threshold']:.4g})")
    for stage in ("test", "external"):
        if target is not None and f"{stage}/sensitivity_at_operating_point" in record:
            parts.append(f"{stage} sensitivity {record[f'{stage}/sensitivity_at_operating_point']:.3f}, "
                         f"specificity {record[f'{stage}/specificity_at_operating_point']:.3f}")
        if f"{stage}/qwk_ci_low" in record:
            parts.append(f"{stage}/qwk {record['bootstrap/level']:.0%} interval [{record[f'{stage}/qwk_ci_low']:.3f}, "
                         f"{record[f'{stage}/qwk_ci_high']:.3f}]")
        if f"{stage}/ece" in record:
            parts.append(f"{stage} ECE {record[f'{stage}/ece']:.3f}")
    if parts:
        log.info("; ".join(parts))
