"""What a searching sweeper (Optuna, ``hparams_search=``) may optimise: validation metrics only.

Hyper-parameters chosen on ``test/*`` would leak the test fold into the model, and every comparison built on
them would be optimistic. A searching sweeper also continues its study by itself (same storage, same study
name), so ``resume=`` has nothing to do there and would re-use trials run with other parameters.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ssl_dr.errors import ConfigError

BASIC_SWEEPER = "BasicSweeper"


class ObjectiveError(ConfigError):
    """A hyper-parameter search set up to optimise something it must not; the message says what to use."""


def is_validation_metric(metric: str) -> bool:
    """``val/...`` (the fine-tune's validation) or ``<phase>/val_...`` (e.g. ``pretext/val_acc``)."""
    return metric.startswith("val/") or "/val_" in metric


def check_objective(optimized_metric: Any, resume: Any, sweeper_target: str, multirun: bool) -> None:
    """Refuse a searching sweeper whose objective is not a validation metric, or that is asked to resume."""
    if not multirun or sweeper_target.endswith(BASIC_SWEEPER) or not sweeper_target:
        return
    metric = str(optimized_metric)
    if not is_validation_metric(metric):
        kind = "the test fold" if metric.startswith("test/") else "not a validation metric"
        raise ObjectiveError(f"optimized_metric={metric} is {kind}: a hyper-parameter search may only optimise "
                             "validation (e.g. optimized_metric=val/qwk_best); the test fold is read once, at the "
                             "end, by the comparison")
    if resume:
        raise ObjectiveError(f"resume={resume} with the {sweeper_target.rsplit('.', 1)[-1]}: the same command "
                             "without resume= continues the study (its storage keeps every trial)")


class CheckObjectiveOnSweepStart(Callback):
    """``on_multirun_start``: refuse a wrong objective before the sweeper creates its study or asks for a
    trial (``ssl_dr.train.main`` checks again in every job, for sweeps started without this callback)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_objective(config.get("optimized_metric"), config.get("resume"),
                            str(config.hydra.sweeper.get("_target_", "")), multirun=True)
        except ObjectiveError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
