"""Camera-cue probe on real photographs: held-out rotation accuracy of the real pretext, per FOV mask and epoch.

The rotation pretext should learn which way is up from the retina. Where the camera says it instead
(flat clipped edges, a rim notch, see ``ssl_dr.data.fundus_preprocess``), masking it away lowers the
held-out accuracy; what is left is the anatomy (and illumination) signal. This trains the real
``RotationPretext`` on the real backbone from the real image cache (one entry per mask, built by
``build_cache`` exactly as ``ssl_dr.train`` builds it) with the rotation pretext's defaults
(``conf/pretext/rotation.yaml``: AdamW 1e-3, cosine, 16 images per batch, each in 4 rotations;
``data.augment`` for the ``pretext`` transform), holds out 10 % of the patients, and prints one table row
per epoch. CPU cost: DenseNet121 trains ~30 rotated images per CPU-second at 64 px and every image counts
4 times, so 1,200 images x 6 epochs is about 15 minutes per mask on one free core.

    python benchmarks/camera_cue_probe.py --data /work/shared/data/eyepacs-dev --n 1200 --epochs 6 \\
        --masks none rotation_invariant

``pretext_accuracy`` is also what ``tests/pretexts/test_camera_cues.py`` runs on anatomy-free images (any pretext).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning import Callback, Trainer

from ssl_dr.data.cache import ImageCache, build_cache
from ssl_dr.data.datamodule import FundusDataModule
from ssl_dr.data.fundus_preprocess import MASKS
from ssl_dr.data.records import Record
from ssl_dr.data.transforms import AugmentConfig, build_transform
from ssl_dr.models.backbone import Backbone
from ssl_dr.pretexts.base import PretextModule
from ssl_dr.pretexts.rotation import RotationPretext


class _EpochAccuracy(Callback):
    """Held-out accuracy after every epoch (validation runs before ``on_train_epoch_end``)."""

    def __init__(self, label: str | None = None) -> None:
        self.values: list[float] = []
        self.label = label
        self.started = time.time()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: PretextModule) -> None:
        self.values.append(float(trainer.callback_metrics["pretext/val_acc"]))
        if self.label:  # progress of a long run: one line per epoch
            print(f"  {self.label} epoch {len(self.values)}: {self.values[-1]:.3f} "
                  f"({time.time() - self.started:.0f} s)", flush=True)


def eyepacs_records(root: Path, n: int | None, seed: int = 0) -> tuple[list[Record], dict[str, str]]:
    """A seeded subset of ``n`` images (all when ``None``) of an eyepacs-dev style folder
    (``labels.csv``: id_code, diagnosis, patient_id; ``images/<id_code>.jpeg``), and each image's patient."""
    table = pd.read_csv(root / "labels.csv", dtype={"id_code": str, "patient_id": str})
    if n is not None and n < len(table):
        table = table.iloc[np.sort(np.random.default_rng(seed).permutation(len(table))[:n])]
    records = [Record(i, root / "images" / f"{i}.jpeg", None) for i in table.id_code]
    return records, dict(zip(table.id_code, table.patient_id, strict=True))


def held_out(records: Sequence[Record], groups: dict[str, str] | None = None, fraction: float = 0.1,
             seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(train, held-out): a seeded ``fraction`` of the groups (patients: both eyes on one side; default:
    every image its own group)."""
    group = [groups[r.id_code] if groups else r.id_code for r in records]
    names = sorted(set(group))
    chosen = set(np.random.default_rng(seed).permutation(names)[:max(1, round(fraction * len(names)))])
    inside = [g in chosen for g in group]
    return ([r for r, held in zip(records, inside, strict=True) if not held],
            [r for r, held in zip(records, inside, strict=True) if held])


def rotation_module(backbone: str = "densenet121", lr: float = 1e-3, epochs: int = 3) -> RotationPretext:
    """The rotation pretext as ``conf/pretext/rotation.yaml`` builds it (AdamW, cosine over the epochs)."""
    return RotationPretext(Backbone(backbone), partial(torch.optim.AdamW, lr=lr, weight_decay=1e-4),
                           partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs), head_hidden=256)


def pretext_accuracy(module: PretextModule, cache: ImageCache, train: Sequence[Record], val: Sequence[Record],
                     epochs: int, batch_size: int = 16, seed: int = 0,
                     transforms: tuple[Callable, Callable] | None = None, label: str | None = None) -> list[float]:
    """Train ``module`` on ``train`` from ``cache`` on the CPU; its held-out accuracy after each epoch
    (printed as it comes when ``label`` names the run).

    ``transforms``: (train, eval); default: the ``pretext`` and ``eval`` pipelines of ``data.augment``'s
    defaults, as rotation and jigsaw use them."""
    torch.manual_seed(seed)
    if transforms is None:
        mean, std = module.backbone.normalization()
        transforms = (build_transform("pretext", cache.size, mean, std, AugmentConfig(), seed),
                      build_transform("eval", cache.size, mean, std, AugmentConfig(), seed))
    data = FundusDataModule(train, val, with_grades=False, batch_size=batch_size, seed=seed, cache=cache,
                            train_transform=transforms[0], eval_transform=transforms[1])
    accuracy = _EpochAccuracy(label)
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[accuracy], deterministic=True)
    trainer.fit(module, datamodule=data)
    return accuracy.values


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="eyepacs-dev style folder")
    parser.add_argument("--n", type=int, default=1200, help="images (seeded subset; 0 = all)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--masks", nargs="+", default=["none", "rotation_invariant"], choices=MASKS)
    parser.add_argument("--ben-graham", action="store_true")
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads: on a busy 2-core machine 2 OpenMP threads waiting for each other "
                             "spent over 2.5x the CPU time of 1 on the same epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    records, patients = eyepacs_records(args.data, args.n or None)
    train, val = held_out(records, patients)
    print(f"{len(records)} images from {args.data}: {len(train)} train, {len(val)} held out (10 % of patients); "
          f"{args.size} px, {args.backbone}, {args.epochs} epochs, ben_graham={args.ben_graham}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="camera-cues-") as tmp:
        for mask in args.masks:
            started = time.time()
            cache = build_cache(records, args.cache or Path(tmp), args.size, args.ben_graham, num_workers=1,
                                mask=mask)
            results[mask] = pretext_accuracy(rotation_module(args.backbone, epochs=args.epochs), cache, train, val,
                                             args.epochs, args.batch_size, label=f"mask={mask}")
            print(f"mask={mask}: {' '.join(f'{a:.3f}' for a in results[mask])} ({time.time() - started:.0f} s)",
                  flush=True)
    print("\nheld-out rotation accuracy (chance 0.25)")
    print("epoch  " + "  ".join(f"{m:>18}" for m in args.masks))
    for epoch in range(args.epochs):
        print(f"{epoch + 1:>5}  " + "  ".join(f"{results[m][epoch]:>18.3f}" for m in args.masks))
    return results


if __name__ == "__main__":
    main()
