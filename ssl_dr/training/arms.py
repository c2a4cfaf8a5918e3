"""How an arm's grader starts, checked before any data work: the ``init`` rules (``init`` must agree with the
backbone's settings, an arm named after a pretext runs that pretext), the pretext's image pool, and where ImageNet
or foundation weights come from (loaded once up front so a wrong file fails in seconds)."""

from __future__ import annotations

import logging

import pandas as pd
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from ssl_dr.config_dir import pretext_arms
from ssl_dr.data.records import Record
from ssl_dr.errors import ConfigError, UserError
from ssl_dr.models.weights_memo import keeping_reads
from ssl_dr.training.probe_phase import NO_NETWORK

log = logging.getLogger(__name__)

INITS = ("pretext", "random", "imagenet", "foundation", NO_NETWORK)
"""How the grader's backbone starts (``init``, set by the arm): the pretext's weights, random, timm's
ImageNet weights (``model.backbone.pretrained``), or a foundation model's file (``model.backbone.weights_format``;
both loaded by ``Backbone`` itself); ``none``: no network (the classical reference arm, probes only)."""


def pretext_pool(records: list[Record], table: pd.DataFrame, pool: str) -> list[Record]:
    """``all``: every image, labelled or not, labels unread (the paper's protocol); ``train_only``: without
    the held-out test fold (strict protocol: the pretext never sees a test image)."""
    if pool == "all":
        return list(records)
    if pool == "train_only":
        test_ids = set(table.loc[table.role == "test", "id_code"])
        return [r for r in records if r.id_code not in test_ids]
    raise ConfigError(f"pretext.pool={pool!r} must be 'all' or 'train_only'")


def check_init(cfg: DictConfig) -> None:
    """``init`` must agree with ``model.backbone.pretrained``: metrics and reports trust ``init``, and a run
    that starts from ImageNet weights under ``init=random`` would be reported as the baseline."""
    if cfg.init not in INITS:
        raise ConfigError(f"init={cfg.init!r} is not one of {INITS}")
    pretrained = bool(cfg.model.backbone.get("pretrained", False))
    if cfg.init == "imagenet" and not pretrained:
        raise ConfigError("init=imagenet needs model.backbone.pretrained=true (arm=imagenet sets it)")
    if cfg.init == "pretext" and cfg.arm in pretext_arms() and cfg.pretext.name != cfg.arm:
        raise ConfigError(f"arm={cfg.arm} but pretext={cfg.pretext.name}: the {cfg.pretext.name} pretext's results "
                          f"would be reported as {cfg.arm}; drop the pretext= override (arm={cfg.arm} chooses its "
                          "pretext)")
    if cfg.init == "random" and pretrained:
        raise ConfigError("init=random but model.backbone.pretrained=true starts from ImageNet weights; "
                          "use arm=imagenet for that, or drop model.backbone.pretrained=true")
    weights_format = cfg.model.backbone.get("weights_format")
    if (cfg.init == "foundation") != bool(weights_format):
        raise ConfigError(f"init={cfg.init} with model.backbone.weights_format={weights_format}: a foundation model's "
                          "file is the init of the foundation arms only (arm=retfound, retfound_dinov2, dinov2), and "
                          "they need its format")


def weights_source(cfg: DictConfig) -> str | None:
    """Where the initial weights of ``init=imagenet`` (file path or hub id) or ``init=foundation`` (the file)
    come from, checked by loading them once before any data work, so a missing or wrong file ends the run in
    seconds, not after the cache. The file's tensors are kept for the fine-tune's build, which reads no file."""
    if cfg.init not in ("imagenet", "foundation"):
        return None
    try:
        with keeping_reads():
            source = instantiate(cfg.model.backbone).weights_source
    except InstantiationException as err:  # Hydra wraps what the constructor raised: raise that instead
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
    log.info("%s weights: %s", "ImageNet" if cfg.init == "imagenet" else "foundation-model", source)
    return source
