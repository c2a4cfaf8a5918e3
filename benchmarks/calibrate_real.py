"""Calibrate the scratch baseline on real photographs, on the CPU, from validation only (issue 20, step 0).

The synthetic set's budget (200 steps) leaves a scratch DenseNet121 predicting grade 0 for every real
photograph. Before a rotation-vs-scratch table on real retinas can mean anything, the baseline must grade
them: this script trains the baseline at 100 % of the labels on one fold under a list of named settings
(head, steps, size, Ben Graham, backbone) and prints, for each, the validation curve, the best and the last
validation QWK, the best referable-DR AUROC, and the wall time. Test metrics are computed by
``ssl_dr.train`` as always but never read here: a setting is chosen on validation only.

Each setting runs ``python -m ssl_dr.train experiment=baseline data=patient_csv data.root=<ROOT> ...`` in its own
folder under ``--out`` (so each setting builds its own image cache, and its wall time includes that build)
and writes ``result.json`` there; a rerun skips finished settings, so the calibration can be stopped and continued.

    python benchmarks/calibrate_real.py ../shared/data/eyepacs-dev --out /tmp/calibration          # all
    python benchmarks/calibrate_real.py ../shared/data/eyepacs-dev --out /tmp/calibration reg128 cls128
    python benchmarks/calibrate_real.py ../shared/data/eyepacs-dev --out /tmp/calibration --list
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

BASE = ("experiment=baseline", "data=patient_csv", "data.label_fraction=1.0", "data.batch_size=16",
        "logger=csv", "trainer.val_check_interval=50")
"""Every setting: the scratch baseline, every label, batch 16, validated every 50 steps (CSV curves)."""

SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cls128": ("classification head, 128 px, 800 steps",
               ("data.image_size=128", "trainer.max_steps=800")),
    "reg128": ("regression head (cut points tuned on validation), 128 px, 800 steps",
               ("data.image_size=128", "trainer.max_steps=800", "model.head=regression")),
    "reg128_bg": ("reg128 + Ben Graham's local-average subtraction",
                  ("data.image_size=128", "trainer.max_steps=800", "model.head=regression",
                   "data.preprocess.ben_graham=true")),
    "reg128_bal": ("reg128 with the training loss weighted by grade (balanced: every grade the same total weight)",
                   ("data.image_size=128", "trainer.max_steps=800", "model.head=regression",
                    "model.classifier.grade_weights=balanced")),
    "cls128_bal": ("cls128 with balanced grade weights in the cross-entropy",
                   ("data.image_size=128", "trainer.max_steps=800", "model.classifier.grade_weights=balanced")),
    "reg160": ("regression head, 160 px, 600 steps (about reg128's wall time)",
               ("data.image_size=160", "trainer.max_steps=600", "model.head=regression")),
    "reg128_lr1e3": ("reg128 at learning rate 1e-3",
                     ("data.image_size=128", "trainer.max_steps=800", "model.head=regression",
                      "model.classifier.optimizer.lr=1e-3")),
    "reg128_r18": ("CPU proxy: ResNet-18 instead of DenseNet121, regression, 128 px, 2400 steps",
                   ("data.image_size=128", "trainer.max_steps=2400", "model.head=regression",
                    "model.backbone.name=resnet18")),
    "reg224_r18": ("CPU proxy at the paper's size: ResNet-18, regression, 224 px, 1400 steps",
                   ("data.image_size=224", "trainer.max_steps=1400", "model.head=regression",
                    "model.backbone.name=resnet18")),
}


def validation_curve(run_dir: Path) -> pd.DataFrame:
    """The fine-tune's validation rows of the CSV logger: step, val/qwk, val/auroc_referable, val/loss."""
    (csv,) = run_dir.glob("finetune/metrics.csv")
    table = pd.read_csv(csv)
    columns = [c for c in ("step", "val/qwk", "val/auroc_referable", "val/loss") if c in table.columns]
    return table.loc[table["val/qwk"].notna(), columns].reset_index(drop=True)


def run_setting(name: str, root: Path, out: Path, fold: int, extra: list[str]) -> dict:
    """Train one setting (or read its finished result) and return its validation summary."""
    folder = out / name
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    description, overrides = SETTINGS[name]
    command = [sys.executable, "-m", "ssl_dr.train", *BASE, f"data.root={root.resolve()}", f"data.fold={fold}",
               *overrides, *extra]
    print(f"[calibrate] {name}: {' '.join(command[2:])}", flush=True)
    start = time.time()
    with open(folder / "train.out", "w") as log:
        finished = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    if finished.returncode != 0:
        raise SystemExit(f"[calibrate] {name} failed (exit {finished.returncode}): see {folder / 'train.out'}")
    (metrics_file,) = folder.glob("outputs/*/runs/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    curve = validation_curve(metrics_file.parent)
    best = curve.loc[curve["val/qwk"].idxmax()]
    auroc = curve["val/auroc_referable"] if "val/auroc_referable" in curve else pd.Series(dtype=float)
    result = {
        "setting": name, "description": description, "fold": fold, "overrides": list(overrides) + extra,
        "minutes": round(seconds / 60, 2), "steps": metrics["train/steps"], "num_train": metrics["num_train"],
        "num_val": metrics["num_val"], "best_val_qwk": round(float(best["val/qwk"]), 4),
        "best_step": int(best["step"]) + 1,
        "best_val_auroc_referable": round(float(auroc.max()), 4) if auroc.notna().any() else math.nan,
        "last_val_qwk": round(float(curve["val/qwk"].iloc[-1]), 4),
        "val_qwk_curve": [round(float(v), 3) for v in curve["val/qwk"]],
        "val_auroc_curve": [round(float(v), 3) for v in auroc],
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder with labels.csv (id_code, diagnosis, patient_id) + images/")
    parser.add_argument("settings", nargs="*", help=f"settings to run (default: all): {', '.join(SETTINGS)}")
    parser.add_argument("--out", type=Path, required=True, help="one folder per setting (result.json, runs)")
    parser.add_argument("--fold", type=int, default=0, help="the fold whose validation slice judges (default 0)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every setting")
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    args = parser.parse_intermixed_args(argv)
    if args.list:
        for name, (description, overrides) in SETTINGS.items():
            print(f"{name:14s} {description}\n{'':14s} {' '.join(overrides)}")
        return
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}: choose from {', '.join(SETTINGS)}")
    if not (args.root / "labels.csv").is_file():
        parser.error(f"{args.root / 'labels.csv'} not found: ROOT is a folder with labels.csv and images/")
    rows = [run_setting(name, args.root, args.out, args.fold, args.override) for name in args.settings or SETTINGS]
    print("\n| setting | steps | train / val images | best val QWK (step) | last val QWK | best val AUROC "
          "(grade >= 2) | minutes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['steps']} | {r['num_train']} / {r['num_val']} | {r['best_val_qwk']:.3f} "
              f"({r['best_step']}) | {r['last_val_qwk']:.3f} | {r['best_val_auroc_referable']:.3f} | "
              f"{r['minutes']:.1f} |")
    for r in rows:
        print(f"{r['setting']}: val QWK every 50 steps {r['val_qwk_curve']}")


if __name__ == "__main__":
    main()
