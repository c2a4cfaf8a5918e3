"""The frozen-feature protocols (``protocol=linear`` or ``knn``) as a job's grading phase, in place of the fine-tune.

The arm's encoder starts exactly as its fine-tune would (pretext weights, random init, ImageNet or a foundation
file; ``arm=classical``: no network, colour and texture statistics), is frozen, and every image's features are
computed once and stored by content (``ssl_dr.probes``); the probe is fitted on the training slice, chosen on the
validation slice inside the fraction, and read once on the test fold and the external set. The job writes the
fine-tune's files (``metrics.json`` keys, ``test_predictions.csv``) so the report reads both protocols alike.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ssl_dr.data.cache import ImageCache
from ssl_dr.data.external import ExternalSet
from ssl_dr.data.records import Record
from ssl_dr.errors import ConfigError
from ssl_dr.models.backbone import Backbone, load_backbone
from ssl_dr.probes.classical import extract_classical
from ssl_dr.probes.evaluate import PROTOCOLS, evaluate_probe
from ssl_dr.probes.features import extract_features
from ssl_dr.probes.store import FeatureSet
from ssl_dr.run_contract import FINETUNE, JobIdentity
from ssl_dr.training.loggers import build_loggers, close_loggers
from ssl_dr.training.wandb_run import publish_finetune_record

log = logging.getLogger(__name__)

NO_NETWORK = "none"
"""``init`` of the classical arm: nothing to fine-tune, features computed from the pixels."""


def check_protocol(cfg: DictConfig) -> None:
    """A known protocol, and one the arm can run: the classical arm has no network to fine-tune."""
    name = cfg.protocol.name
    if name not in (FINETUNE, *PROTOCOLS):
        raise ConfigError(f"protocol={name!r} is not one of {FINETUNE}, {', '.join(PROTOCOLS)}")
    if cfg.init == NO_NETWORK and name == FINETUNE:
        raise ConfigError(f"arm={cfg.arm} has no network to fine-tune; use protocol=linear or protocol=knn")


def probe(cfg: DictConfig, train: list[Record], val: list[Record], test: list[Record], cache: ImageCache,
          init_weights: Path | None, out_dir: Path, external: ExternalSet | None = None,
          run_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Features of the arm's frozen encoder -> ``cfg.protocol`` probe -> ``val/*``, ``test/*`` (and
    ``external/*``) scores; writes ``test_predictions.csv`` (and ``external_predictions.csv``) into ``out_dir``."""
    features, external_features = _features(cfg, cache, init_weights, external)
    params = {k: v for k, v in cfg.protocol.items() if k in ("k", "temperature", "max_iter")}
    if "c_grid" in cfg.protocol:
        params["c_grid"] = [float(c) for c in cfg.protocol.c_grid]
    run_name = JobIdentity.from_config(cfg).run_name()
    loggers = build_loggers(cfg, "probe", run_name, f"{cfg.arm}-{cfg.protocol.name}-{out_dir.name}")
    failed = True
    try:
        scores = evaluate_probe(cfg.protocol.name, features, train, val, test, out_dir=out_dir,
                                external=(external.records, external_features) if external else None, **params)
        if external is not None:
            scores["external/root"] = str(external.root)  # as the fine-tune's external grading names it
        for logger in loggers:
            logger.log_metrics({k: v for k, v in scores.items() if isinstance(v, int | float)}, step=0)
        publish_finetune_record(loggers, {**(run_record or {}), **scores})
        failed = False
    finally:
        close_loggers(loggers, failed)
    return scores


def _features(cfg: DictConfig, cache: ImageCache, init_weights: Path | None, external: ExternalSet | None
              ) -> tuple[FeatureSet, FeatureSet | None]:
    """The stored features of the training data set's cache and of the external set's (``None`` without one)."""
    cache_dir = Path(cfg.paths.cache_dir)
    if cfg.init == NO_NETWORK:
        return extract_classical(cache, cache_dir), extract_classical(external.cache, cache_dir) if external else None
    backbone: Backbone = instantiate(cfg.model.backbone)
    if init_weights is not None:
        load_backbone(backbone, init_weights)
    if cfg.trainer.get("accelerator") != "cpu" and torch.cuda.is_available():
        backbone = backbone.cuda()
    size, batch = cfg.data.image_size, cfg.protocol.get("batch_size", 64)
    own = extract_features(backbone, cache, cache_dir, image_size=size, batch_size=batch)
    other = extract_features(backbone, external.cache, cache_dir, image_size=size, batch_size=batch) if external \
        else None
    return own, other
