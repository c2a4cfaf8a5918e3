"""Entry point: ``python -m ssl_dr.train experiment=rotation`` (Hydra).

compose config -> read records -> split (``split.csv``) -> [pretext, reused when identical] ->
fine-tune -> test on the held-out fold -> ``metrics.json``. ``main`` returns ``cfg.optimized_metric``
so Hydra sweepers (Optuna, ...) can optimise it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from ssl_dr.config_dir import config_dir
from ssl_dr.data.cache import ImageCache, build_cache
from ssl_dr.data.external import ExternalSet, load_external
from ssl_dr.data.records import NUM_GRADES, Record
from ssl_dr.data.splits import (
    SplitConfig,
    label_counts,
    read_folds,
    records_with_role,
    split_roles,
    stored_folds,
    write_split,
)
from ssl_dr.errors import UserError
from ssl_dr.launch.folders import JOB_FAILED, finished_job
from ssl_dr.launch.guards import check_multirun_strategy, check_sync_batchnorm
from ssl_dr.launch.objective import BASIC_SWEEPER, ObjectiveError, check_objective
from ssl_dr.launch.resolvers import register_resolvers
from ssl_dr.models.heads import check_grade_weights, check_head
from ssl_dr.ranks import RankZeroHeartbeat, is_launch_rank_zero
from ssl_dr.run_contract import BEST_CHECKPOINT, ENVIRONMENT, LAST_CHECKPOINT, METRICS, SPLIT, JobIdentity, write_atomic
from ssl_dr.training.arms import check_init, pretext_pool, weights_source
from ssl_dr.training.budget import check_budget, freeze_steps
from ssl_dr.training.environment import describe_environment, loaded_code
from ssl_dr.training.external import grade_external
from ssl_dr.training.phases import finetune, pretext_weights
from ssl_dr.training.probe_phase import FINETUNE, check_protocol, probe
from ssl_dr.training.screening import check_evaluation, patients, screen
from ssl_dr.training.wandb_publish import media_config

log = logging.getLogger(__name__)
register_resolvers()  # before @hydra.main composes: hydra.run.dir uses ${ssl_dr.run_dir:...}
USER_ERRORS = (UserError,)
"""Errors of the user's data or settings (``ssl_dr.errors``): one ``error: ...`` line, exit status 2."""
CONFIG_DIR = config_dir()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment job and return its final metrics (also written to ``metrics.json``)."""
    loaded_code()  # the commit this process imported, taken now: a sweep's later jobs must not ask git again
    check_init(cfg)
    check_protocol(cfg)
    check_evaluation(cfg)
    check_head(cfg.model.head)  # in seconds, not after the image cache and the pretext
    check_grade_weights(cfg.model.classifier.get("grade_weights", "none"))
    check_budget(cfg)
    media_config(cfg)  # a bad media.* count fails now, not after training
    check_sync_batchnorm(cfg.trainer)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with RankZeroHeartbeat(out_dir):  # DDP ranks waiting for rank 0 stop waiting when it dies
        return _run(cfg, out_dir)


def _run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    log.info(f"{cfg.arm}: fraction {cfg.data.label_fraction}, fold {cfg.data.fold}; outputs in {out_dir}")
    initial = weights_source(cfg)  # before seeding: building the check's model draws random numbers
    L.seed_everything(cfg.seed, workers=True)

    source = instantiate(cfg.data.source)
    source.prepare()
    records = source.load()
    external = load_external(cfg, records)  # external validation (test_data=): refused or cached before training
    split_cfg = SplitConfig(num_folds=cfg.data.num_folds, fold=cfg.data.fold, split_seed=cfg.data.split_seed,
                            val_fraction=cfg.data.val_fraction, label_fraction=cfg.data.label_fraction,
                            val_protocol=cfg.data.val_protocol)
    folds_path = stored_folds(records, split_cfg.num_folds, split_cfg.split_seed, Path(cfg.paths.cache_dir) / "folds")
    table = split_roles(records, split_cfg, read_folds(folds_path, records))
    write_split(table, out_dir / SPLIT)
    labels = label_counts(table, split_cfg)
    log.info(f"split ({folds_path.name}): {labels['labels/train']} training / {labels['labels/val']} validation / "
             f"{int((table.role == 'test').sum())} test images; labels read {labels['labels/read']} of "
             f"{labels['labels/available']} ({cfg.data.val_protocol} validation); "
             + (f"fine-tune budget {cfg.trainer.max_steps} steps" if cfg.protocol.name == FINETUNE
                else f"{cfg.protocol.name} probe on frozen features"))
    # decodes every image once (all unreadable files are reported together, before any training)
    cache = build_cache(records, Path(cfg.paths.cache_dir) / "images", size=cfg.data.image_size,
                        ben_graham=cfg.data.preprocess.ben_graham, num_workers=cfg.data.preprocess.num_workers,
                        mask=cfg.data.preprocess.mask)

    init_weights, pretext_info = None, {}
    if cfg.init == "pretext":
        pool = pretext_pool(records, table, cfg.pretext.pool)
        init_weights, pretext_info = pretext_weights(cfg, pool, cache, out_dir)
    init_source = str(init_weights) if cfg.init == "pretext" else initial  # random: None
    record = {**JobIdentity.from_config(cfg).record(), "init": cfg.init, "init/weights": init_source,
              "folds_file": str(folds_path.resolve()),
              "num_train": int((table.role == "train").sum()), "num_val": int((table.role == "val").sum()),
              "num_test": int((table.role == "test").sum()), **labels,
              "output_dir": str(out_dir), "finetune/freeze_steps": freeze_steps(cfg), **pretext_info}
    L.seed_everything(cfg.seed, workers=True)  # same fine-tune randomness whether the pretext ran or not
    roles = [records_with_role(records, table, role) for role in ("train", "val", "test")]
    scores, chosen = _grade(cfg, roles, external, cache, init_weights, out_dir, record)
    metrics = {**record, **scores}  # the W&B run's summary holds this same record
    log.info(f"tested {chosen} "
             f"(val/qwk {scores.get('val/qwk_best', math.nan):.4f}): "
             f"test/qwk {scores.get('test/qwk', math.nan):.4f}, referable AUROC "
             f"{scores.get('test/auroc_referable', math.nan):.3f}, {scores.get('test/grades_predicted')} grade(s) "
             f"predicted; per-grade recall {_recalls(scores)}")
    if is_launch_rank_zero():  # every DDP rank runs this job; one writes its result (and the predictions)
        write_metrics(out_dir / ENVIRONMENT, describe_environment(cfg))  # why numbers may differ
        write_metrics(out_dir / METRICS, metrics)
        if not cfg.get("keep_last_checkpoint", False):  # finished: nothing left to resume
            (out_dir / LAST_CHECKPOINT).unlink(missing_ok=True)
    log.info(f"done: test/qwk = {metrics.get('test/qwk', float('nan')):.4f}  ({out_dir})")
    return metrics


def _grade(cfg: DictConfig, roles: list[list[Record]], external: ExternalSet | None, cache: ImageCache,
           init_weights: Path | None, out_dir: Path, record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The protocol's grading phase (fine-tune, or a probe on frozen features), the external set graded by the model
    chosen on validation, and the screening figures; returns the scores and, in words, what was tested."""
    if cfg.protocol.name == FINETUNE:
        scores = finetune(cfg, *roles, cache=cache, init_weights=init_weights, out_dir=out_dir, run_record=record)
        if is_launch_rank_zero():  # external validation (test_data=): the checkpoint chosen on validation grades it
            scores.update(grade_external(cfg, external, out_dir / BEST_CHECKPOINT, out_dir))
        chosen = f"the checkpoint of step {scores.get('best/step')}"
    else:  # frozen features: the probe chosen on validation grades the test fold and the external set
        scores = probe(cfg, *roles, cache=cache, init_weights=init_weights, out_dir=out_dir, external=external,
                       run_record=record)
        chosen = f"the {cfg.protocol.name} probe" + (f" (C {scores['probe/C']:g})" if scores.get("probe/C") else "")
    if is_launch_rank_zero() and (cfg.protocol.name != FINETUNE or external is not None):
        # operating point, calibration, intervals of the prediction files rank 0 wrote (the fine-tune's test fold
        # has them already, in its W&B run too: only the external set's are added)
        stages = ("test", "external") if cfg.protocol.name != FINETUNE else ("external",)
        scores.update(screen(cfg.evaluation, out_dir, {
            "test": patients(roles[2]), "external": patients(external.records) if external else {}}, stages))
    return scores, chosen


def _recalls(scores: dict[str, Any]) -> str:
    """``0: 0.95, 1: 0.00, ...``: the tested checkpoint's recall per grade on the test fold (n/a: no such image)."""
    values = [scores.get(f"test/recall_grade{g}", math.nan) for g in range(NUM_GRADES)]
    return ", ".join(f"{g}: {v:.2f}" if v == v else f"{g}: n/a" for g, v in enumerate(values))


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Written whole or not at all (temporary name, then renamed): a job killed while writing leaves no
    half file that a resumed sweep would take for finished or the report would choke on."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str)))


def _user_error(err: BaseException) -> Exception | None:
    """The bad-data/bad-setting error behind ``err``, if any: Hydra's ``instantiate`` wraps what a
    constructor raised (a ``Backbone`` that cannot load its weights) in an ``InstantiationException``."""
    while err is not None:
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__
    return None


def _finished_in_resumed_sweep(cfg: DictConfig) -> dict[str, Any] | None:
    """A resumed sweep keeps its finished jobs: their metrics, not run again, files untouched (Hydra left
    their ``.hydra/`` alone, see ``ssl_dr.launch.folders.config_subdir``, and this job's log handler is
    closed so the launcher's next line does not land in the finished job's log)."""
    if not (_in_multirun() and cfg.get("resume")):
        return None
    finished = finished_job(cfg.paths.output_dir)
    if finished is not None:
        log.info(f"{cfg.paths.output_dir}: finished before (metrics.json), not run again")
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
    return finished


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra task: run ``train`` and return the optimised metric.

    A single run ends bad data/settings in one clear line (exit status 2). Inside a multirun a failing
    job is logged to its ``train.log`` and the sweep goes on, so one bad job cannot cost the others; the
    report then lists it as failed (it has no ``metrics.json``).
    """
    check_multirun_strategy(cfg, HydraConfig.get())  # outside the try: a wrong launcher stops the sweep
    sweeper = str(HydraConfig.get().sweeper.get("_target_", ""))
    searching = _in_multirun() and not sweeper.endswith(BASIC_SWEEPER)  # Optuna & co. use the return value
    try:  # also stops the sweep: every trial would be wrong
        check_objective(cfg.optimized_metric, cfg.get("resume"), sweeper, _in_multirun())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finished = _finished_in_resumed_sweep(cfg)
    if finished is not None:
        value = finished.get(cfg.optimized_metric)
        return float(value) if value is not None else math.nan
    try:
        metrics = train(cfg)
    except Exception as err:
        user_error = _user_error(err)
        if _in_multirun():
            if user_error is not None:
                log.error("%s %s", JOB_FAILED, user_error)
            else:
                log.exception("%s %s: %s", JOB_FAILED, type(err).__name__, err)
            if searching:  # a failed trial for the sweeper (a NaN return breaks Optuna 2.x's bookkeeping)
                raise
            return math.nan
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None
    value = metrics.get(cfg.optimized_metric)
    value = float(value) if value is not None else math.nan
    if searching and not math.isfinite(value):
        raise ObjectiveError(f"optimized_metric={cfg.optimized_metric} is {value} in this trial's metrics.json "
                             f"({cfg.paths.output_dir}); a search needs a finite score from every trial")
    return value


if __name__ == "__main__":
    main()
