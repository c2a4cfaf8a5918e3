"""End to end through the real config: both experiments run, leave the contract's files, and an
identical pretext is reused instead of retrained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from ssl_dr.errors import ConfigError
from ssl_dr.train import CONFIG_DIR, train
from tests.conftest import TINY, TINY_TRAINING, compose_cfg


def test_rotation_then_baseline_share_split_and_reuse_pretext(tiny_cfg, tmp_path):
    rot = train(tiny_cfg("experiment=rotation", run="rot"))
    out = Path(rot["output_dir"])
    assert rot["arm"] == "rotation" and rot["pretext/reused"] is False
    assert 0.0 <= rot["pretext/val_acc"] <= 1.0
    for name in ("metrics.json", "environment.json", "split.csv", "checkpoints/best.ckpt", "finetune/metrics.csv",
                 "pretext/metrics.csv"):
        assert (out / name).is_file(), name
    environment = json.loads((out / "environment.json").read_text())  # what it ran on, for the report
    assert environment["packages"]["torch"] == torch.__version__.split("+")[0] and environment["fingerprint"]
    assert environment["trainer"]["precision"] == tiny_cfg("experiment=rotation").trainer.precision
    # lean: a finished run keeps the weights and the inference spec, not the optimiser state or last.ckpt
    assert not (out / "checkpoints" / "last.ckpt").exists()
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" not in best and "inference" in best["hyper_parameters"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/qwk"] == pytest.approx(rot["test/qwk"])
    assert {"val/qwk_best", "test/qwk", "test/acc", "label_fraction", "fold", "arm"} <= saved.keys()
    split = pd.read_csv(out / "split.csv")
    assert list(split.columns) == ["id_code", "diagnosis", "role"]
    assert saved["num_test"] == (split.role == "test").sum()
    folds = pd.read_csv(saved["folds_file"], dtype={"id_code": str})  # the citable fold file agrees
    assert set(split.query("role == 'test'").id_code) == set(folds.query("fold == 0").id_code)

    again = train(tiny_cfg("experiment=rotation", "data.label_fraction=0.5", run="rot2"))
    assert again["pretext/reused"] is True and again["pretext/key"] == rot["pretext/key"]
    assert not (Path(again["output_dir"]) / "pretext").exists()

    base = train(tiny_cfg("experiment=baseline", run="base"))
    assert base["arm"] == "baseline" and "pretext/key" not in base
    assert pd.read_csv(Path(base["output_dir"]) / "split.csv").equals(split)


@pytest.mark.e2e
def test_changed_pretext_setting_is_not_reused(tiny_cfg):
    first = train(tiny_cfg("experiment=rotation", "trainer.max_steps=2", run="a"))
    other = train(tiny_cfg("experiment=rotation", "trainer.max_steps=2", "pretext.module.head_hidden=32", run="b"))
    assert other["pretext/reused"] is False and other["pretext/key"] != first["pretext/key"]


def test_every_experiment_composes():
    """Every option Hydra lists (files, and the experiments derived from conf/pretext/) names an arm it lists."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options
        experiments, arms = options("experiment"), options("arm")
        for name in experiments:
            assert compose(config_name="train", overrides=[f"experiment={name}"]).arm in arms, name
    assert {"rotation", "jigsaw", "simclr", "mae", "baseline", "paper"} <= set(experiments)


@pytest.mark.e2e
def test_cli_from_another_directory_writes_hydra_files_and_wandb(tmp_path):
    """The real command, run outside the repo: configs are found, outputs land under the cwd."""
    env = {**os.environ, "WANDB_SILENT": "true"}
    overrides = [o for o in TINY if not o.startswith("logger=")]
    result = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=baseline", *overrides],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "baseline" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert json.loads((run / "metrics.json").read_text())["arm"] == "baseline"
    assert list((run / "wandb").glob("offline-run-*")), "no offline W&B run"
    assert f"outputs in {run}" in result.stdout.replace(str(tmp_path.resolve()), str(tmp_path)) or \
        "outputs in" in result.stdout
    assert "test/qwk =" in result.stdout
    # the run's story is in its train.log, in the console's words (Python logging through Hydra's job_logging)
    said = [line.removeprefix("[ssl_dr] ") for line in result.stdout.splitlines() if line.startswith("[ssl_dr] ")]
    logged = [line.split("] - ", 1)[1] for line in (run / "train.log").read_text().splitlines() if "] - " in line]
    assert len(said) >= 4 and said == logged
    assert any(line.startswith("split (") for line in logged)
    assert any(line.startswith("tested the checkpoint of step") and "per-grade recall" in line for line in logged)


@pytest.mark.e2e
def test_bad_setting_ends_in_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=baseline", *TINY, "data.fold=7"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "data.fold=7 is outside [0, 5)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("data", ["synthetic", "aptos", "eyepacs", "csv"])
def test_every_data_config_composes_and_instantiates(data, tmp_path):
    cfg = compose_cfg(tmp_path, [f"data={data}", f"data.root={tmp_path}"])
    source = instantiate(cfg.data.source)
    assert source.root == tmp_path


def test_aptos_folder_through_real_config(tmp_path):
    """A user APTOS folder (here written by the generator) runs via data=aptos with patient-free folds."""
    from ssl_dr.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "aptos2019", num_labelled=60, num_unlabelled=5, image_size=32)
    cfg = compose_cfg(tmp_path, [*TINY_TRAINING, "experiment=baseline", "data=aptos", f"data.root={root}"])
    metrics = train(cfg)
    assert metrics["num_test"] == 12 and metrics["arm"] == "baseline"


def test_pretext_pool_train_only_excludes_the_test_fold(tiny_cfg):
    from ssl_dr.data.splits import SplitConfig, split_roles
    from ssl_dr.training.arms import pretext_pool

    cfg = tiny_cfg("experiment=rotation")
    source = instantiate(cfg.data.source)
    source.prepare()
    records = source.load()
    table = split_roles(records, SplitConfig(fold=1))
    strict = pretext_pool(records, table, "train_only")
    test_ids = set(table.query("role == 'test'").id_code)
    assert len(strict) == len(records) - len(test_ids) and not test_ids & {r.id_code for r in strict}
    assert any(r.grade is None for r in strict)  # unlabelled images stay in the pool
    assert pretext_pool(records, table, "all") == records
    with pytest.raises(ConfigError, match="pretext.pool='fold'"):
        pretext_pool(records, table, "fold")


@pytest.mark.e2e
def test_corrupt_images_are_all_named_before_training(tmp_path):
    """Two unreadable files in an APTOS folder: one message naming both, exit 2, no training started."""
    from ssl_dr.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "aptos", num_labelled=40, num_unlabelled=0, image_size=32)
    (root / "train_images" / "syn_00003.png").write_bytes(b"")
    truncated = root / "train_images" / "syn_00007.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    result = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=baseline", "data=aptos",
                             f"data.root={root}", *TINY_TRAINING], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "syn_00003.png" in result.stderr and "syn_00007.png" in result.stderr
    assert "Traceback" not in result.stderr and "Epoch" not in result.stdout


def test_checkpoint_carries_what_inference_needs(tiny_cfg):
    import torch

    from ssl_dr.models.backbone import Backbone
    from ssl_dr.models.classifier import DRClassifier

    out = Path(train(tiny_cfg("experiment=baseline", run="ckpt"))["output_dir"])
    ckpt = out / "checkpoints" / "best.ckpt"
    inference = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["inference"]
    assert inference["backbone"] == "densenet121" and inference["image_size"] == 32
    assert inference["preprocess"]["ben_graham"] is False and len(inference["mean"]) == 3
    model = DRClassifier.load_from_checkpoint(ckpt, backbone=Backbone(inference["backbone"]), weights_only=True)
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_unknown_head_fails_before_any_data_work(tiny_cfg, tmp_path):
    from ssl_dr.models.heads import HeadError

    cfg = tiny_cfg("experiment=rotation", "model.head=softmax")
    with pytest.raises(HeadError, match="model.head='softmax'"):
        train(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()


def test_unknown_grade_weighting_fails_before_any_data_work(tiny_cfg, tmp_path):
    from ssl_dr.models.heads import HeadError

    with pytest.raises(HeadError, match="model.classifier.grade_weights='inverse'"):
        train(tiny_cfg("experiment=baseline", "model.classifier.grade_weights=inverse"))
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()


def test_grade_weights_come_from_the_training_split(tiny_cfg):
    """The loss weights are counted on the run's own training split (labels it reads anyway), no other."""
    out = Path(train(tiny_cfg("experiment=baseline", "model.classifier.grade_weights=balanced"))["output_dir"])
    split = pd.read_csv(out / "split.csv")
    trained = split.query("role == 'train'").diagnosis.value_counts().reindex(range(5), fill_value=0).tolist()
    hparams = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["grade_weights"] == "balanced" and hparams["grade_counts"] == trained
    assert sum(trained) < len(split)


def test_pretext_arm_with_another_pretext_is_refused(tiny_cfg, tmp_path):
    cfg = tiny_cfg("experiment=jigsaw", "pretext=rotation")
    with pytest.raises(ConfigError, match="arm=jigsaw but pretext=rotation"):
        train(cfg)
    assert not (tmp_path / "data").exists()
