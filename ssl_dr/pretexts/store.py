"""The content-addressed store of pretext results, whole: the key (a hash of everything that shapes the weights),
the lock that lets one of several parallel jobs train while the others wait and reuse, the saved weights and their
summary, and the DDP ranks that follow rank 0's choice. Equal key -> same result -> reuse; any change -> a new entry,
never a stale one. How a pretext is trained is the caller's (``ssl_dr.training.phases``)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ssl_dr.data.cache import PREPROCESS_VERSION
from ssl_dr.data.file_hashes import HASHES_DIR, pool_fingerprint
from ssl_dr.data.records import Record
from ssl_dr.models.backbone import load_backbone, save_backbone
from ssl_dr.ranks import await_choice, await_file, heartbeat_path, is_launch_rank_zero, share_choice
from ssl_dr.run_contract import write_atomic

log = logging.getLogger(__name__)

WEIGHTS_NAME = "backbone.pt"
SUMMARY_NAME = "pretext.json"
LOCK_NAME = ".lock"
# checkpoints of a pretext still training (removed once the weights are saved)
PARTIAL_DIR = "partial"
Train = Callable[[str, Path], dict[str, Any]]
"""Trains the pretext of a key with its checkpoints in the given folder; returns ``{"backbone": ..., **metrics}``."""


DEBUG_LIMITS = ("fast_dev_run", "overfit_batches")
"""Trainer debug modes that cut the pretext short: in its store key when on (and only then, so the keys of
pretexts stored before they existed stay valid)."""
SPEED_ONLY_PREPROCESS = ("num_workers",)
VIT_BACKBONE_KEYS = ("weights_format", "model_kwargs", "mean", "std")
"""``model.backbone`` keys of the ViT arms (null / empty by default)."""
"""``data.preprocess`` keys that change how fast the cache is built, never its pixels: not in the store key."""


def pretext_description(cfg: DictConfig, pool: list[Record]) -> dict[str, Any]:
    """Everything that shapes the pretext's weights, and nothing that only changes speed: the store key is
    its hash, so a missing entry would serve stale weights and a speed setting would retrain for nothing.

    In: the pretext config, the backbone, image size, preprocessing (its pixel settings and the code's
    ``PREPROCESS_VERSION``), augmentation, ``seed`` and ``data.split_seed`` (it draws the pretext's held-out
    slice), the pool (ids and file bytes), precision, batch limits, and the number of
    processes with the learning-rate rule (the global batch and its learning rate shape the weights), and the
    trainer's batch limits and debug modes (a ``debug=fdr`` pretext of one batch must never be reused).
    Out: cache-building workers, loader workers, compile, channels_last and gradient checkpointing. The
    ImageNet-weights keys count only for a pretrained backbone: a sweep naming
    ``model.backbone.weights_file`` for its imagenet arm must not retrain the other arms' pretexts."""
    backbone = OmegaConf.to_container(cfg.model.backbone, resolve=True)
    if not backbone.get("pretrained", False) and not backbone.get("weights_format"):
        backbone = {k: v for k, v in backbone.items() if k not in ("weights_file", "pretrained_tag")}
    # keys added with the ViT backbones count only when set, so pretexts stored before them keep their keys
    backbone = {k: v for k, v in backbone.items() if not (k in VIT_BACKBONE_KEYS and v in (None, {}))}
    preprocess = {k: v for k, v in OmegaConf.to_container(cfg.data.preprocess, resolve=True).items()
                  if k not in SPEED_ONLY_PREPROCESS}
    return {"pretext": OmegaConf.to_container(cfg.pretext, resolve=True),
            "backbone": backbone,
            "image_size": cfg.data.image_size,
            "preprocess": {**preprocess, "version": PREPROCESS_VERSION},
            "augment": OmegaConf.to_container(cfg.data.augment, resolve=True),
            "seed": cfg.seed, "split_seed": cfg.data.split_seed,
            "pool_size": len(pool), "pool": pool_fingerprint(pool, Path(cfg.paths.cache_dir) / HASHES_DIR),
            "precision": str(cfg.trainer.get("precision")),
            "processes": {k: cfg.trainer.get(k) for k in ("devices", "num_nodes")},
            "limits": {**{k: cfg.trainer.get(k) for k in ("limit_train_batches", "limit_val_batches")},
                       **{k: cfg.trainer.get(k) for k in DEBUG_LIMITS if cfg.trainer.get(k)}}}


def pretext_key(description: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able description."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_dir(cache_dir: str | Path, key: str) -> Path:
    """Folder holding one pretext result."""
    return Path(cache_dir) / "pretext" / key


def stored_weights(cache_dir: str | Path, key: str) -> Path | None:
    """The weights file of a finished pretext with this key, or ``None``."""
    path = entry_dir(cache_dir, key) / WEIGHTS_NAME
    return path if path.is_file() else None


def write_summary(cache_dir: str | Path, key: str, summary: dict[str, Any]) -> None:
    """Human-readable description + metrics next to the weights (written after them)."""
    write_atomic(entry_dir(cache_dir, key) / SUMMARY_NAME,
                 lambda tmp: tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str)))


def stored_meta(cache_dir: str | Path, key: str, cfg: DictConfig) -> dict[str, Any]:
    """A stored pretext's metrics from its summary, so a reusing job reads the weights file once (when it loads
    them); an entry without a readable summary (killed between the two writes) gives them from the weights."""
    try:
        summary = json.loads((entry_dir(cache_dir, key) / SUMMARY_NAME).read_text())
        return {k: v for k, v in summary.items() if k not in ("key", "description")}
    except (OSError, ValueError):
        return load_backbone(instantiate(cfg.model.backbone), entry_dir(cache_dir, key) / WEIGHTS_NAME)


def stored_or_trained(cfg: DictConfig, pool: list[Record], out_dir: Path, train: Train
                      ) -> tuple[Path, dict[str, Any]]:
    """The weights file of the pretext ``cfg`` describes over ``pool``, and its record: reused when the store holds
    its key, else trained by ``train`` under the key's lock and saved (rank 0; the other DDP ranks follow)."""
    description = pretext_description(cfg, pool)
    key = pretext_key(description)
    cache_dir = Path(cfg.paths.cache_dir).resolve()
    entry_dir(cache_dir, key).mkdir(parents=True, exist_ok=True)
    if not is_launch_rank_zero():  # another DDP rank of this run: rank 0 holds the lock while training with it
        return _follow_rank_zero(cfg, out_dir, key, train)
    # Parallel sweep jobs: one trains, the others wait here and then reuse. The OS drops the lock of a
    # crashed job, and its weights were never renamed into place, so the next job retrains.
    with FileLock(entry_dir(cache_dir, key) / LOCK_NAME):
        found = stored_weights(cache_dir, key)
        share_choice(out_dir, f"pretext-{key}", {"reuse": found is not None})
        if found is not None:
            meta = stored_meta(cache_dir, key, cfg)
            log.info("reusing pretext %s from %s", key, found)
            return found, {"pretext/key": key, "pretext/reused": True, **meta}
        partial = entry_dir(cache_dir, key) / PARTIAL_DIR
        meta = train(key, partial)
        path = entry_dir(cache_dir, key) / WEIGHTS_NAME
        save_backbone(meta.pop("backbone"), path, meta=meta)
        write_summary(cache_dir, key, {"key": key, "description": description, **meta})
        shutil.rmtree(partial, ignore_errors=True)
    log.info(f"pretext {key}: held-out {cfg.pretext.name} accuracy {meta['pretext/val_acc']:.3f}; "
             f"saved {path}")
    return path, {"pretext/key": key, "pretext/reused": False, **meta}


def _follow_rank_zero(cfg: DictConfig, out_dir: Path, key: str, train: Train) -> tuple[Path, dict[str, Any]]:
    """A DDP rank other than 0: reuse when rank 0 reuses, else train in the same DDP fit; rank 0 saves."""
    entry = entry_dir(Path(cfg.paths.cache_dir).resolve(), key)
    reuse = await_choice(out_dir, f"pretext-{key}")["reuse"]
    if not reuse:
        train(key, entry / PARTIAL_DIR)
    path = await_file(entry / WEIGHTS_NAME, heartbeat_path(out_dir))
    return path, {"pretext/key": key, "pretext/reused": reuse, **stored_meta(entry.parent.parent, key, cfg)}
