"""One home per arm (``ssl_dr.config_dir``): a pretext's arm and experiment are derived from ``conf/pretext/``, an arm
file holds how the grader starts and which file it reads, and the networks are ``conf/model/`` options."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from ssl_dr.config_dir import pretext_arms, register_pretext_arms
from ssl_dr.train import CONFIG_DIR

CONF = Path(CONFIG_DIR)
NETWORK_KEYS = ("model.backbone.name", "model.backbone.model_kwargs", "model.backbone.mean", "model.backbone.std",
                "model.classifier")


def _compose(*overrides: str, conf: Path = CONF) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def _options(group: str) -> list[str]:
    """The options of a config group as Hydra lists them (files and ConfigStore entries)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return GlobalHydra.instance().config_loader().get_group_options(group)


@pytest.fixture
def store_restored():
    """ConfigStore is one per process: drop what a test registers, so no other test sees its toy options."""
    before = {group: set(ConfigStore.instance().repo.get(group, {})) for group in ("arm", "experiment")}
    yield
    for group, names in before.items():
        for name in set(ConfigStore.instance().repo.get(group, {})) - names:
            del ConfigStore.instance().repo[group][name]


def test_every_pretext_is_an_arm_and_an_experiment():
    assert pretext_arms() == ("jigsaw", "mae", "rotation", "simclr")  # conf/pretext/*.yaml, _common.yaml left out
    assert set(pretext_arms()) <= set(_options("arm")) & set(_options("experiment"))
    for name in pretext_arms():
        for chooser in (f"arm={name}", f"experiment={name}"):
            cfg = _compose(chooser)
            assert (cfg.arm, cfg.init, cfg.pretext.name) == (name, "pretext", name), chooser


def test_the_plain_pretext_arms_have_no_files_and_an_arm_file_wins():
    """rotation, jigsaw and simclr are derived; mae's own file also picks its ViT, and is the option."""
    assert not any((CONF / group / f"{name}.yaml").exists() for group in ("arm", "experiment")
                   for name in ("rotation", "jigsaw", "simclr"))
    assert (CONF / "arm" / "mae.yaml").is_file()
    assert _compose("experiment=mae").model.backbone.name == "vit_small_patch8_224"
    assert _compose("experiment=jigsaw").model.backbone.name == "densenet121"


def test_a_new_pretext_needs_only_its_config_file(tmp_path, store_restored):
    """A copy of conf/ with one more pretext file: its arm and experiment compose, a sweep may name the arm."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    toy = OmegaConf.load(conf / "pretext" / "rotation.yaml")
    toy.name = "toy"
    OmegaConf.save(toy, conf / "pretext" / "toy.yaml")
    register_pretext_arms(conf)
    for chooser in ("experiment=toy", "arm=toy", "experiment=paper_cpu arm=toy"):
        cfg = _compose(*chooser.split(), conf=conf)
        assert (cfg.arm, cfg.init, cfg.pretext.name) == ("toy", "pretext", "toy"), chooser
    assert _compose("arm=toy", "pretext=jigsaw", conf=conf).pretext.name == "jigsaw"  # refused at run time


def test_the_command_composes_a_derived_experiment_from_another_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=jigsaw", "--cfg", "job"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    job = OmegaConf.create(done.stdout)
    assert (job.arm, job.init, job.pretext.name) == ("jigsaw", "pretext", "jigsaw")


def test_arms_hold_the_start_and_the_file_and_models_the_networks():
    """No arm file sets a network setting; each ViT arm picks a conf/model option."""
    for path in sorted((CONF / "arm").glob("*.yaml")):
        arm = OmegaConf.load(path)
        assert [key for key in NETWORK_KEYS if OmegaConf.select(arm, key) is not None] == [], path.name
    picks = {"mae": "vit_small_patch8", "retfound": "vit_large_patch16", "retfound_dinov2": "vit_large_patch14_dinov2",
             "dinov2": "vit_large_patch14_dinov2"}
    for arm, model in picks.items():
        assert {"override /model": model} in OmegaConf.load(CONF / "arm" / f"{arm}.yaml").defaults, arm
        assert _compose(f"arm={arm}").model.backbone.name == _compose(f"model={model}").model.backbone.name


def test_every_grader_shares_the_common_settings():
    """Each network option is _common's grader with its own network: no option adds or reorders a key."""
    common = OmegaConf.load(CONF / "model" / "_common.yaml")
    for model in [name for name in _options("model") if not name.startswith("_")]:
        cfg = _compose(f"model={model}").model
        assert list(cfg.backbone) == list(common.backbone) and list(cfg.classifier) == list(common.classifier)
