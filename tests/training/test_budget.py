"""The fine-tune budget: optimiser steps, equal for every arm and fraction; warm-up + cosine per step; the
encoder frozen only when it starts from learned weights; metrics.json says what was trained."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssl_dr.errors import ConfigError
from ssl_dr.models.optim import WarmupCosineFactor, warmup_cosine
from ssl_dr.train import train
from ssl_dr.training.budget import check_budget, freeze_steps


def test_warmup_then_cosine_factors():
    factor = WarmupCosineFactor(warmup_steps=4, total_steps=12)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0  # the cosine starts at the full rate
    assert factor(8) == pytest.approx(0.5)  # half-way through the 8 decay steps
    assert factor(12) == pytest.approx(0.0, abs=1e-12)
    assert factor(11) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_schedule_survives_a_checkpoint_round_trip():
    """A class, not a lambda: LambdaLR saves it, so a resumed fine-tune continues the same schedule."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(opt, warmup_steps=2, total_steps=10)
    for _ in range(5):
        opt.step()
        schedule.step()
    state = schedule.state_dict()
    fresh_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = warmup_cosine(fresh_opt, warmup_steps=0, total_steps=3)
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0].total_steps == 10 and fresh.last_epoch == 5


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=8", "trainer.max_epochs=8: the fine-tune's budget is trainer.max_steps"),
    ("trainer.max_steps=-1", "trainer.max_steps=-1: the fine-tune needs a budget"),
    ("trainer.max_steps=210", "not a multiple of trainer.val_check_interval=20"),
    ("trainer.val_check_interval=0.5", "validate every N optimiser steps"),
    ("model.classifier.freeze_steps=201", "model.classifier.freeze_steps=201 must be in [0, trainer.max_steps=200]"),
    ("model.classifier.scheduler.warmup_steps=300", "warmup_steps=300 must be in"),
])
def test_budget_settings_are_checked_with_the_key_to_change(tmp_path, override, message):
    from tests.conftest import compose_cfg

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_budget(compose_cfg(tmp_path, ["experiment=rotation", override]))


def test_the_defaults_are_a_valid_budget(tmp_path):
    from tests.conftest import compose_cfg

    for experiment in ("rotation", "baseline", "jigsaw", "simclr"):
        cfg = compose_cfg(tmp_path, [f"experiment={experiment}"])
        check_budget(cfg)
        assert cfg.trainer.max_steps == 200 and cfg.trainer.max_epochs is None


def test_only_a_learned_encoder_is_frozen(tmp_path):
    from tests.conftest import compose_cfg

    assert freeze_steps(compose_cfg(tmp_path, ["experiment=rotation"])) == 20
    assert freeze_steps(compose_cfg(tmp_path, ["experiment=baseline"])) == 0


@pytest.mark.e2e
def test_every_fraction_and_arm_trains_the_same_number_of_steps(tiny_cfg):
    """5x fewer labels used to mean 5x fewer optimiser steps; now the step count is the budget for all."""
    common = ("trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_train_batches=null")
    keep = "keep_last_checkpoint=true"
    small = train(tiny_cfg("experiment=baseline", "data.label_fraction=0.25", *common, keep, run="small"))
    full = train(tiny_cfg("experiment=rotation", "data.label_fraction=1.0", *common, keep, run="full"))
    assert small["train/steps"] == full["train/steps"] == 6
    assert small["train/epochs"] > full["train/epochs"]  # the small fraction sees its images more often
    assert small["best/step"] in (3, 6) and full["best/step"] in (3, 6)
    assert (small["finetune/freeze_steps"], full["finetune/freeze_steps"]) == (0, 1)
    assert 1 <= small["test/grades_predicted"] <= 5
    for run in (small, full):  # last.ckpt is the final state (resume continues from it), not the last best
        last = torch.load(Path(run["output_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert last["global_step"] == 6
