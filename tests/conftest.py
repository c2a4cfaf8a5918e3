"""Shared fixtures: the real Hydra config, composed with tiny CPU settings and tmp_path outputs."""

from __future__ import annotations

import os
from pathlib import Path

# One CPU thread per pytest-xdist worker, for the worker and every command it starts (set before torch is
# imported: torch sizes its thread pool from it). Two workers of one thread each ran the e2e and slow tiers
# in 512 s on 2 cores where one process of two threads took 1005 s: most of a test is single-threaded (imports,
# data, Hydra, checkpoints) and tiny models gain little from a second thread. Two workers of two threads each
# oversubscribed the cores and took longer than the serial run. A test that needs more threads sets
# OMP_NUM_THREADS in its command's environment itself (the DDP test does).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from ssl_dr.train import CONFIG_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
"""The checkout's root (benchmarks/, conf/), wherever a test file sits below tests/."""

# Small enough for ~seconds per phase on 2 CPU cores, still the real DenseNet121 and real pipeline.
TINY_SYNTHETIC = ["data.source.num_labelled=60", "data.source.num_unlabelled=8", "data.source.image_size=32"]
TINY_TRAINING = [
    "data.image_size=32",
    "data.batch_size=8",
    "pretext.batch_size=4",
    "pretext.max_epochs=1",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "model.classifier.scheduler.warmup_steps=1",
    "model.classifier.freeze_steps=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "logger=csv",
]
TINY = TINY_SYNTHETIC + TINY_TRAINING


@pytest.fixture(autouse=True, scope="session")
def wandb_staging_in_tmp(tmp_path_factory) -> None:
    """W&B stages the files of logged tables and artifacts in ``$WANDB_DATA_DIR`` until a sync (a run's loggers
    point it at the run folder, ``ssl_dr.training.loggers.stage_in``, unless it is set) and writes its service's
    debug logs under ``$WANDB_CACHE_DIR``; both default to the home folder. Under the tests both are a temporary
    folder, so the suite never fills the home folder."""
    os.environ["WANDB_DATA_DIR"] = str(tmp_path_factory.mktemp("wandb-data"))
    os.environ["WANDB_CACHE_DIR"] = str(tmp_path_factory.mktemp("wandb-cache"))


def compose_cfg(root: Path, overrides: list[str], run: str = "run") -> DictConfig:
    """Compose ``train.yaml`` as the CLI would, with outputs under ``root``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.root_dir={root}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "outputs" / run)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    """Factory: ``tiny_cfg("experiment=rotation", ..., run="a")``."""
    return lambda *overrides, run="run": compose_cfg(tmp_path, [*TINY, *overrides], run=run)


def write_two_eye_photos(image_dir: Path, patients: int, seed: int, first_patient: int = 0) -> list[tuple]:
    """Built-in generator images saved as ``image_dir/<patient>_<left|right>.jpeg``, two eyes per patient (the
    naming of EyePACS and eyepacs-dev), for tests of real-data layouts that must not need real photographs.
    Returns ``(name, grade, patient, eye)`` rows for the caller to write in its layout's CSV."""
    import csv

    import cv2

    from ssl_dr.data.synthetic.writer import write_synthetic_dataset

    synthetic = write_synthetic_dataset(image_dir.parent / f"synthetic-{seed}", num_labelled=2 * patients,
                                        num_unlabelled=0, image_size=48, seed=seed)
    with open(synthetic / "train.csv") as f:
        generated = list(csv.DictReader(f))
    image_dir.mkdir(parents=True)
    rows = []
    for i, row in enumerate(generated):
        patient, eye = first_patient + i // 2, "left" if i % 2 == 0 else "right"
        name = f"{patient}_{eye}"
        image = cv2.imread(str(synthetic / "train_images" / f"{row['id_code']}.png"))
        assert cv2.imwrite(str(image_dir / f"{name}.jpeg"), image)
        rows.append((name, row["diagnosis"], patient, eye))
    return rows
