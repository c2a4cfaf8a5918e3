"""DDP ranks following rank 0: its choices reach them, and a dead rank 0 ends their wait with a clear error."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ssl_dr.ranks import (
    RANK_VARIABLES,
    RankZeroGoneError,
    RankZeroHeartbeat,
    await_choice,
    await_file,
    heartbeat_path,
    is_launch_rank_zero,
    share_choice,
)


@pytest.fixture(autouse=True)
def _rank_zero(monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_rank_zero_is_known_from_the_launchers_environment(variable, monkeypatch):
    assert is_launch_rank_zero()
    monkeypatch.setenv(variable, "0")
    assert is_launch_rank_zero()
    monkeypatch.setenv(variable, "1")
    assert not is_launch_rank_zero()


def test_other_ranks_read_the_choice_of_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    share_choice(tmp_path, "pretext-abc", {"reuse": True})
    assert await_choice(tmp_path, "pretext-abc", stale_s=0) == {"reuse": True}
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # a later attempt never reads an older attempt's choice
    with pytest.raises(RankZeroGoneError, match="rank 0 has shown no sign of life"):
        await_choice(tmp_path, "pretext-abc", stale_s=0.2)


def test_a_dead_rank_zero_ends_the_wait(tmp_path):
    beat = heartbeat_path(tmp_path)
    beat.touch()
    old = time.time() - 300
    os.utime(beat, (old, old))  # rank 0 stopped beating five minutes ago
    started = time.time()
    with pytest.raises(RankZeroGoneError, match=str(beat.name)):
        await_file(tmp_path / "weights.pt", beat, stale_s=120)
    assert time.time() - started < 5


def test_a_live_rank_zero_is_waited_for_longer_than_the_staleness_limit(tmp_path):
    """Rank 0 waiting for another job's pretext may take hours: alive, it is waited for without limit."""
    target = tmp_path / "choice.json"
    with RankZeroHeartbeat(tmp_path, every_s=0.05):
        threading.Timer(1.0, target.write_text, args=("{}",)).start()
        assert await_file(target, heartbeat_path(tmp_path), stale_s=0.3, poll_s=0.05) == target
    assert not heartbeat_path(tmp_path).exists()  # a finished rank 0 is not a live one


def test_other_ranks_do_not_beat(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    with RankZeroHeartbeat(tmp_path, every_s=0.05):
        assert not heartbeat_path(tmp_path).exists()
