"""The two training phases of a run, each built entirely from config.

``pretext_weights`` returns backbone weights from the rotation pretext — reused from the store when an
identical pretext already ran, trained otherwise. ``finetune`` trains the grader on the run's split,
picks the checkpoint with the best ``val/qwk`` and tests it on the held-out fold.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from hydra.utils import instantiate
from lightning import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from ssl_dr.backbone import Backbone, load_backbone, save_backbone
from ssl_dr.data.cache import ImageCache
from ssl_dr.data.datamodule import FundusDataModule
from ssl_dr.data.records import Record, pool_fingerprint
from ssl_dr.data.transforms import AugmentConfig, build_transform
from ssl_dr.loggers import build_loggers, close_loggers
from ssl_dr.pretext_store import LOCK_NAME, WEIGHTS_NAME, entry_dir, pretext_key, stored_weights, write_summary


def _transforms(cfg: DictConfig, backbone: Backbone, train_kind: str) -> dict[str, Any]:
    mean, std = backbone.normalization()
    augment = AugmentConfig(**OmegaConf.to_container(cfg.data.augment, resolve=True))
    size = cfg.data.image_size
    return {"train_transform": build_transform(train_kind, size, mean, std, augment, seed=cfg.seed),
            "eval_transform": build_transform("eval", size, mean, std, augment, seed=cfg.seed)}


def _fit(cfg: DictConfig, phase: str, run_name: str, module: Any, datamodule: FundusDataModule,
         test: bool = False, **trainer_overrides: Any) -> dict[str, float]:
    """Fit (and optionally test the best checkpoint) with loggers that are closed whatever happens."""
    loggers = build_loggers(cfg, phase, run_name)
    failed = True
    try:
        trainer: Trainer = instantiate(cfg.trainer, logger=loggers, **trainer_overrides)
        trainer.fit(module, datamodule=datamodule)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if test:
            best = trainer.checkpoint_callback
            metrics["val/qwk_best"] = float(best.best_model_score) if best and best.best_model_score is not None \
                else float("nan")
            tested = trainer.test(module, datamodule=datamodule, ckpt_path="best" if best else None)
            metrics.update({k: float(v) for k, v in tested[0].items()})
        failed = False
        return metrics
    finally:
        close_loggers(loggers, failed)


def _callbacks(cfg: DictConfig) -> list[Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def pretext_description(cfg: DictConfig, pool: list[Record]) -> dict[str, Any]:
    """Everything that shapes the pretext's weights (the store key is its hash)."""
    return {"pretext": OmegaConf.to_container(cfg.pretext, resolve=True),
            "backbone": OmegaConf.to_container(cfg.model.backbone, resolve=True),
            "image_size": cfg.data.image_size,
            "preprocess": OmegaConf.to_container(cfg.data.preprocess, resolve=True),
            "augment": OmegaConf.to_container(cfg.data.augment, resolve=True),
            "seed": cfg.seed, "pool_size": len(pool), "pool": pool_fingerprint(pool),
            "precision": str(cfg.trainer.get("precision")),
            "limits": {k: cfg.trainer.get(k) for k in ("limit_train_batches", "limit_val_batches")}}


def pretext_weights(cfg: DictConfig, records: list[Record], cache: ImageCache, out_dir: Path
                    ) -> tuple[Path, dict[str, Any]]:
    """Weights of the rotation pretext over the pool (all images; labels never read)."""
    pool = list(records)
    description = pretext_description(cfg, pool)
    key = pretext_key(description)
    cache_dir = Path(cfg.paths.cache_dir).resolve()
    entry_dir(cache_dir, key).mkdir(parents=True, exist_ok=True)
    # Parallel sweep jobs: one trains, the others wait here and then reuse. The OS drops the lock of a
    # crashed job, and its weights were never renamed into place, so the next job retrains.
    with FileLock(entry_dir(cache_dir, key) / LOCK_NAME):
        found = stored_weights(cache_dir, key)
        if found is not None:
            meta = load_backbone(instantiate(cfg.model.backbone), found)
            print(f"[ssl_dr] reusing pretext {key} from {found}")
            return found, {"pretext/key": key, "pretext/reused": True, **meta}
        meta = _train_pretext(cfg, pool, cache, out_dir, key)
        path = entry_dir(cache_dir, key) / WEIGHTS_NAME
        save_backbone(meta.pop("backbone"), path, meta=meta)
        write_summary(cache_dir, key, {"key": key, "description": description, **meta})
    print(f"[ssl_dr] pretext {key}: held-out rotation accuracy {meta['pretext/val_acc']:.3f}; saved {path}")
    return path, {"pretext/key": key, "pretext/reused": False, **meta}


def _train_pretext(cfg: DictConfig, pool: list[Record], cache: ImageCache, out_dir: Path, key: str
                   ) -> dict[str, Any]:
    """Train the pretext on a seeded 90/10 split of the pool; return its backbone and held-out metrics."""
    order = np.random.default_rng(cfg.data.split_seed).permutation(len(pool))
    n_val = max(1, round(cfg.pretext.val_fraction * len(pool)))
    val = [pool[i] for i in order[:n_val]]
    train = [pool[i] for i in order[n_val:]]
    backbone: Backbone = instantiate(cfg.model.backbone)
    module = instantiate(cfg.pretext.module, backbone=backbone)
    datamodule = FundusDataModule(train, val, with_grades=False, batch_size=cfg.pretext.batch_size,
                                  num_workers=cfg.data.num_workers, cache=cache,
                                  **_transforms(cfg, backbone, "pretext"))
    started = time.time()
    callbacks = [c for c in _callbacks(cfg) if not isinstance(c, ModelCheckpoint)]  # it monitors val/qwk
    metrics = _fit(cfg, "pretext", f"pretext-{key[:8]}", module, datamodule,
                   max_epochs=cfg.pretext.max_epochs, enable_checkpointing=False,
                   default_root_dir=str(out_dir / "pretext"), callbacks=callbacks)
    return {"backbone": backbone, "pretext/val_acc": metrics.get("pretext/val_acc"),
            "pretext/val_loss": metrics.get("pretext/val_loss"), "pretext/train_acc": metrics.get("pretext/train_acc"),
            "pretext/seconds": round(time.time() - started, 1), "pretext/trained_in": str(out_dir)}


def finetune(cfg: DictConfig, train: list[Record], val: list[Record], test: list[Record], cache: ImageCache,
             init_weights: Path | None) -> dict[str, float]:
    """Grade with the backbone initialised from ``init_weights`` (or at random) and test the best
    checkpoint (chosen on ``val/qwk``) on the held-out fold."""
    backbone: Backbone = instantiate(cfg.model.backbone)
    if init_weights is not None:
        load_backbone(backbone, init_weights)
    mean, std = backbone.normalization()
    inference = {"backbone": backbone.name, "image_size": cfg.data.image_size, "mean": list(mean), "std": list(std),
                 "preprocess": OmegaConf.to_container(cfg.data.preprocess, resolve=True)}
    module = instantiate(cfg.model.classifier, backbone=backbone, inference=inference)
    datamodule = FundusDataModule(train, val, test, with_grades=True, batch_size=cfg.data.batch_size,
                                  num_workers=cfg.data.num_workers, cache=cache,
                                  **_transforms(cfg, backbone, "finetune"))
    run_name = f"{cfg.arm}-frac{cfg.data.label_fraction}-fold{cfg.data.fold}"
    return _fit(cfg, "finetune", run_name, module, datamodule, test=True, callbacks=_callbacks(cfg))
