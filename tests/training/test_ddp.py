"""DDP: a real 2-process run on the CPU (gloo) scores the whole held-out fold, each image exactly once.

Lightning's default distributed sampler pads each rank's shard by repeating images, and an unsynced metric
would score one rank's shard only; both would make ``test/qwk`` disagree with the QWK of the saved
per-image predictions, which is what this checks. SyncBatchNorm needs CUDA, so it is off here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score

from ssl_dr.data.datamodule import _evaluation_sampler
from ssl_dr.launch.guards import DistributedSettingsError, check_sync_batchnorm
from ssl_dr.models.backbone import Backbone
from ssl_dr.models.optim import lr_scale
from ssl_dr.pretexts.rotation import RotationPretext
from ssl_dr.run_contract import TEST_PREDICTIONS
from ssl_dr.train import train

# 62 labelled images -> a 13-image test fold: odd, so two equal shards are impossible without repeats
DDP_RUN = ["data.source.num_labelled=62", "data.source.num_unlabelled=8", "data.source.image_size=32",
           "data.image_size=32", "data.batch_size=8", "pretext.batch_size=4", "pretext.max_epochs=1",
           "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
           "model.classifier.freeze_steps=0",
           "model.classifier.scheduler.warmup_steps=0", "trainer.limit_val_batches=2",
           "logger=csv", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "trainer.sync_batchnorm=false"]


def _check_predictions_against_metrics(run: Path) -> tuple[pd.DataFrame, dict]:
    metrics = json.loads((run / "metrics.json").read_text())
    table = pd.read_csv(run / TEST_PREDICTIONS)
    split = pd.read_csv(run / "split.csv")
    test_ids = split.loc[split.role == "test", "id_code"]
    assert table.id_code.is_unique, "an image was scored twice"
    assert sorted(table.id_code) == sorted(test_ids), "predictions do not cover exactly the test fold"
    assert len(table) == metrics["num_test"]
    grades = split.set_index("id_code").loc[table.id_code, "diagnosis"].to_numpy()
    assert (table.grade.to_numpy() == grades).all()
    qwk = cohen_kappa_score(table.grade, table.pred, weights="quadratic", labels=list(range(5)))
    assert metrics["test/qwk"] == pytest.approx(qwk, abs=1e-5)
    assert metrics["test/acc"] == pytest.approx(accuracy_score(table.grade, table.pred), abs=1e-6)
    probs = table[[f"p{k}" for k in range(5)]].to_numpy()
    assert (probs.argmax(axis=1) == table.pred.to_numpy()).all()
    return table, metrics


@pytest.mark.e2e
def test_two_process_ddp_run_on_cpu_scores_the_whole_test_fold_once(tmp_path):
    env = {**os.environ, "WANDB_SILENT": "true"}
    result = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=rotation", *DDP_RUN],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "rotation" / "runs").iterdir()
    table, metrics = _check_predictions_against_metrics(run)
    assert metrics["num_test"] % 2 == 1  # the case where padding would have duplicated an image
    assert math.isfinite(metrics["pretext/val_acc"]) and metrics["pretext/reused"] is False
    assert len(list((tmp_path / "cache" / "pretext").glob("*/backbone.pt"))) == 1, "one pretext, saved once"
    # both phases ran on 2 ranks: AdamW's learning rate follows the global batch (sqrt rule)
    assert result.stdout.count("2 ranks: global batch") == 2
    lrs = pd.read_csv(run / "finetune" / "metrics.csv")["lr-AdamW"].dropna()
    assert lrs.iloc[0] == pytest.approx(3e-4 * math.sqrt(2))


def test_single_process_run_writes_the_same_prediction_file(tiny_cfg):
    cfg = tiny_cfg("experiment=baseline")
    train(cfg)
    _check_predictions_against_metrics(Path(cfg.paths.output_dir))


def test_evaluation_loaders_are_plain_outside_ddp():
    assert not torch.distributed.is_initialized()
    assert _evaluation_sampler(list(range(5))) is None


@pytest.mark.parametrize(("rule", "optimizer", "factor"), [
    ("auto", "AdamW", 2.0), ("auto", "SGD", 4.0), ("linear", "AdamW", 4.0), ("sqrt", "SGD", 2.0),
    ("none", "AdamW", 1.0)])
def test_learning_rate_rules_for_four_ranks(rule, optimizer, factor):
    assert lr_scale(rule, 4, optimizer) == factor
    assert lr_scale(rule, 1, optimizer) == 1.0


def test_unknown_lr_rule_names_the_key():
    with pytest.raises(ValueError, match="pretext.module.lr_scaling='cubic'"):
        RotationPretext(Backbone("resnet10t"), partial(torch.optim.AdamW, lr=1e-3), lr_scaling="cubic")


@pytest.mark.parametrize(("world_size", "optimizer", "expected"), [
    (1, torch.optim.AdamW, 1e-3), (4, torch.optim.AdamW, 2e-3), (4, torch.optim.SGD, 4e-3)])
def test_the_optimiser_is_built_with_the_learning_rate_of_the_trainers_world_size(world_size, optimizer, expected,
                                                                                   caplog):
    """The factor comes from the trainer the module is attached to, where the optimiser is built."""
    module = RotationPretext(Backbone("resnet10t"), partial(optimizer, lr=1e-3))
    module._trainer = SimpleNamespace(world_size=world_size, is_global_zero=True)
    with caplog.at_level("INFO", logger="ssl_dr.models.optim"):
        built = module.configure_optimizers()  # the module's own wiring: its rule reaches the optimiser
    assert built.param_groups[0]["lr"] == pytest.approx(expected)
    assert (f"{world_size} ranks" in caplog.text) == (world_size > 1)


def test_sync_batchnorm_on_cpu_processes_is_refused_with_the_fix(tiny_cfg):
    cfg = tiny_cfg("trainer=ddp", "trainer.accelerator=cpu")
    with pytest.raises(DistributedSettingsError, match="trainer.sync_batchnorm=false"):
        check_sync_batchnorm(cfg.trainer)
    check_sync_batchnorm(tiny_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=false").trainer)
    check_sync_batchnorm(tiny_cfg("trainer=ddp").trainer, cuda_available=True)  # GPUs: allowed


@pytest.mark.e2e
def test_cli_refuses_sync_batchnorm_on_cpu_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=baseline", *DDP_RUN[:-1]],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: trainer.sync_batchnorm=true needs GPUs" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists(), "refused before any data work"
