"""experiment=paper is the paper's protocol (real data, GPU); experiment=paper_cpu is the quick start, swept.

Composition only (Hydra's compose API, no data read, nothing trained). docs/protocol.md gives the source or
the reason for every value checked here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ssl_dr.train import CONFIG_DIR

FRACTIONS = "0.05,0.1,0.25,0.5,1.0"
FOLDS = "0,1,2,3,4"
SEEDS = "42,43,44"
# keys of an experiment file that define its sweep, not the settings of a run
SWEEP_KEYS = ("hydra", "sweep_name", "arms", "defaults")


def _compose(*overrides: str, hydra: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items_ex(resolve=False):  # data.split_seed: ${seed} has no seed in the file alone
        path = f"{prefix}{key}"
        keys += _leaf_keys(value, f"{path}.") if isinstance(value, DictConfig) else [path]
    return keys


def _run_settings(cfg: DictConfig) -> dict:
    """The composed config of a run without the keys that only name or shape the sweep, its partition
    (``data.split_seed``) resolved: the presets derive it from the seed, the quick start sets 42."""
    settings = OmegaConf.to_container(cfg, resolve=False)
    for key in SWEEP_KEYS:
        settings.pop(key, None)
    settings["data"]["split_seed"] = cfg.data.split_seed
    return settings


def _paper_file_keys() -> list[str]:
    """Every leaf key conf/experiment/paper.yaml sets for a run (its sweep definition left out)."""
    own = OmegaConf.load(Path(CONFIG_DIR) / "experiment" / "paper.yaml")
    return [k for k in _leaf_keys(own) if k.split(".")[0] not in SWEEP_KEYS]


@pytest.mark.parametrize("data", ["aptos", "eyepacs"])
def test_paper_is_the_papers_protocol_on_real_data(data):
    """224 px, batch 32 and learning rate 1e-5 where the paper states them (docs/protocol.md says which
    phase), 200 pretext epochs, a fine-tune budget in optimiser steps, validation inside the label fraction,
    the field-of-view mask, and the sweep arm x 5 fractions x 5 folds."""
    cfg = _compose("experiment=paper", f"data={data}", f"data.root=/nonexistent/{data}", "trainer=gpu",
                   hydra=True)
    assert cfg.data.source.root == f"/nonexistent/{data}"  # the chosen real data set, not the built-in one
    assert cfg.data.image_size == 224
    assert cfg.data.batch_size == 32 and cfg.pretext.batch_size == 32
    assert cfg.pretext.module.optimizer.lr == pytest.approx(1e-5)
    assert cfg.pretext.max_epochs == 200
    # the paper's "1e-5" does not say which phase; the authors' fine-tune configs use 5e-5 for every arm
    assert cfg.model.classifier.optimizer.lr == pytest.approx(5e-5)
    # budget: optimiser steps, validated at its last step, warm-up and freeze inside it
    assert cfg.trainer.max_epochs is None and cfg.trainer.check_val_every_n_epoch is None
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (1740, 87)
    assert cfg.trainer.max_steps % cfg.trainer.val_check_interval == 0
    assert cfg.model.classifier.scheduler.total_steps == cfg.trainer.max_steps
    assert 0 < cfg.model.classifier.scheduler.warmup_steps < cfg.model.classifier.freeze_steps < cfg.trainer.max_steps
    assert cfg.data.val_protocol == "within_fraction"
    assert cfg.data.preprocess.mask == "rotation_invariant"
    assert cfg.trainer.accelerator == "gpu"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert (params.arm, params["data.label_fraction"], params["data.fold"]) == ("rotation,baseline", FRACTIONS, FOLDS)


def test_paper_passes_the_run_time_budget_checks():
    """The preset is accepted by the checks every run makes before any data work (ssl_dr.training.budget)."""
    budget = pytest.importorskip("ssl_dr.training.budget")
    for arm in ("rotation", "baseline"):
        cfg = _compose("experiment=paper", "data=aptos", "data.root=/nonexistent", "trainer=gpu", f"arm={arm}")
        budget.check_budget(cfg)
    assert budget.freeze_steps(cfg) == 0  # the random-init baseline is never frozen


def test_paper_gives_every_arm_and_fraction_the_same_fine_tune():
    """Same optimiser-step budget, schedule, optimiser, batch and validation for every arm and fraction (the
    pretext arm alone freezes its encoder at the start, decided at run time from `init`)."""
    def fine_tune(*overrides: str) -> tuple:
        cfg = _compose("experiment=paper", "data=aptos", "data.root=/nonexistent", "trainer=gpu", *overrides)
        return (OmegaConf.to_container(cfg.trainer), OmegaConf.to_container(cfg.model.classifier),
                cfg.data.batch_size, cfg.data.val_protocol, cfg.data.val_fraction)

    reference = fine_tune("arm=rotation", "data.label_fraction=1.0")
    for arm in ("rotation", "baseline"):
        for fraction in FRACTIONS.split(","):
            assert fine_tune(f"arm={arm}", f"data.label_fraction={fraction}") == reference


def test_paper_pretext_settings_hold_for_every_pretext_arm():
    """200 epochs, batch 32, 1e-5 are the protocol's pretext, whichever pretext an arm chooses."""
    for arm in ("rotation", "jigsaw", "simclr"):
        cfg = _compose("experiment=paper", "data=aptos", "data.root=/nonexistent", f"arm={arm}")
        assert cfg.pretext.name == arm
        assert (cfg.pretext.max_epochs, cfg.pretext.batch_size) == (200, 32)
        assert cfg.pretext.module.optimizer.lr == pytest.approx(1e-5)


def test_paper_cpu_is_the_quick_start_for_every_key_paper_sets():
    """For every key conf/experiment/paper.yaml sets, experiment=paper_cpu has the quick-start value (that of
    experiment=rotation): fails as soon as paper.yaml gains a key that leaks into paper_cpu."""
    keys = _paper_file_keys()
    assert {"data.image_size", "pretext.max_epochs", "trainer.max_steps"} <= set(keys)
    cpu, quick = _compose("experiment=paper_cpu"), _compose("experiment=rotation")
    leaked = {k: (OmegaConf.select(cpu, k), OmegaConf.select(quick, k)) for k in keys
              if OmegaConf.select(cpu, k) != OmegaConf.select(quick, k)}
    assert not leaked, f"experiment=paper_cpu differs from the quick start (paper_cpu, quick start): {leaked}"
    assert (cpu.data.image_size, cpu.data.batch_size, cpu.pretext.max_epochs, cpu.pretext.batch_size) == (64, 16, 3, 16)
    assert cpu.model.classifier.optimizer.lr == pytest.approx(3e-4)
    assert cpu.pretext.module.optimizer.lr == pytest.approx(1e-3)
    assert cpu.trainer.max_epochs is None


@pytest.mark.parametrize("arm", ["rotation", "baseline", "jigsaw", "simclr"])
def test_paper_cpu_runs_exactly_the_quick_start_config(arm):
    """Beyond paper.yaml's keys: a paper_cpu job of seed 42 composes to exactly the single-run config of its arm
    (each pretext keeps its own defaults, e.g. jigsaw's 10 epochs; partition 42 like the quick start's),
    apart from the sweep's name and arm list."""
    cpu, quick = _compose("experiment=paper_cpu", f"arm={arm}"), _compose(f"arm={arm}")
    assert (cpu.seed, cpu.data.split_seed, quick.seed, quick.data.split_seed) == (42, 42, 42, 42)
    assert _run_settings(cpu) == _run_settings(quick)


@pytest.mark.parametrize("experiment", ["paper", "paper_cpu"])
def test_a_repetition_of_the_presets_is_a_seed_and_its_own_partition(experiment):
    """In experiment=paper and paper_cpu a seed is a repetition: it sets data.split_seed too (the corrected
    repeated k-fold t assumes new partitions); data.split_seed on the command line still fixes one partition.
    The quick start (experiment=rotation) keeps partition 42 whatever the seed."""
    for seed in (42, 43, 7):
        assert _compose(f"experiment={experiment}", f"seed={seed}").data.split_seed == seed
        assert _compose("experiment=rotation", f"seed={seed}").data.split_seed == 42
    assert _compose(f"experiment={experiment}", "seed=43", "data.split_seed=42").data.split_seed == 42
    jobs = _jobs(f"experiment={experiment}", sweeps=("seed=" + SEEDS,))
    assert {job[0] for job in jobs} == {f"seed={seed}" for seed in SEEDS.split(",")}
    assert not any(override.startswith("data.split_seed") for job in jobs for override in job)


@pytest.mark.parametrize("overrides", [[], ["arms=[rotation,jigsaw,simclr,imagenet,baseline]"]])
def test_paper_cpu_sweeps_what_paper_sweeps(overrides):
    """paper_cpu repeats paper.yaml's sweep (it does not include paper.yaml): same mode, axes in the same order,
    arms, fractions and folds, in its own output folder; only the seeds differ: paper_cpu runs 3, paper the
    first of them (the run's default seed), and ``seed=42,43,44`` widens paper to paper_cpu's."""
    paper = _compose("experiment=paper", *overrides, hydra=True)
    cpu = _compose("experiment=paper_cpu", *overrides, hydra=True)
    assert cpu.hydra.mode == paper.hydra.mode
    cpu_params, paper_params = (OmegaConf.to_container(c.hydra.sweeper.params) for c in (cpu, paper))
    assert list(cpu_params) == list(paper_params) == ["seed", "data.label_fraction", "data.fold", "arm"]
    assert {k: v for k, v in cpu_params.items() if k != "seed"} == {k: v for k, v in paper_params.items()
                                                                    if k != "seed"}
    assert (cpu_params["seed"], paper_params["seed"]) == (SEEDS, "42") and paper.seed == cpu.seed == 42
    assert cpu.hydra.sweeper.params["data.label_fraction"] == FRACTIONS
    assert cpu.hydra.sweeper.params["data.fold"] == FOLDS
    assert list(cpu.arms) == list(paper.arms)
    assert (paper.sweep_name, cpu.sweep_name) == ("paper", "paper_cpu")
    assert _jobs("experiment=paper", *overrides, sweeps=("seed=" + SEEDS,)) == _jobs("experiment=paper_cpu", *overrides)


def _jobs(*overrides: str, sweeps: tuple[str, ...] = ()) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches, in order: the sweeper params, then the command line's ``sweeps``
    (a key given on both keeps the params' place and takes the command line's values)."""
    params = OmegaConf.to_container(_compose(*overrides, hydra=True).hydra.sweeper.params, resolve=True)
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()] + [*sweeps])
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return batch


def test_paper_cpu_runs_3_seeds_slowest_and_arm_fastest():
    """150 jobs: the first seed's complete table (50 jobs) first; within it the arms of one fraction and fold
    back to back. experiment=paper alone: the same first 50 jobs."""
    jobs = _jobs("experiment=paper_cpu")
    assert len(jobs) == 3 * 5 * 5 * 2
    assert jobs[:3] == [["seed=42", "data.label_fraction=0.05", "data.fold=0", "arm=rotation"],
                        ["seed=42", "data.label_fraction=0.05", "data.fold=0", "arm=baseline"],
                        ["seed=42", "data.label_fraction=0.05", "data.fold=1", "arm=rotation"]]
    assert [job[0] for job in jobs] == ["seed=42"] * 50 + ["seed=43"] * 50 + ["seed=44"] * 50
    assert _jobs("experiment=paper") == jobs[:50]
    assert [job[0] for job in _jobs("experiment=paper_cpu", sweeps=("seed=0,1",))] == ["seed=0"] * 50 + ["seed=1"] * 50
