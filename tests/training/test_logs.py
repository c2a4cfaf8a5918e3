"""The run's story through Python logging: only the rank that owns the run speaks (Hydra's job_logging)."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from ssl_dr.train import CONFIG_DIR
from ssl_dr.training.logs import RankZeroOnly

RECORD = logging.LogRecord("ssl_dr.train", logging.INFO, __file__, 1, "done", None, None)


@pytest.mark.parametrize(("variables", "passes"), [
    ({}, True), ({"LOCAL_RANK": "0"}, True), ({"LOCAL_RANK": "1"}, False), ({"RANK": "3"}, False),
    ({"SLURM_PROCID": "1"}, False)])
def test_only_rank_zero_speaks(monkeypatch, variables, passes):
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert RankZeroOnly().filter(RECORD) is passes


def test_both_handlers_of_the_job_log_are_rank_zero_only():
    logging_cfg = OmegaConf.load(f"{CONFIG_DIR}/hydra/default.yaml").job_logging
    assert logging_cfg.filters.rank_zero["()"] == "ssl_dr.training.logs.RankZeroOnly"
    assert {name: list(h.filters) for name, h in logging_cfg.handlers.items()} == {"console": ["rank_zero"],
                                                                                   "file": ["rank_zero"]}
    assert list(logging_cfg.root.handlers) == ["console", "file"]
