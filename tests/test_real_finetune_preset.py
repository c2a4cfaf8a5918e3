"""experiment=real_finetune: the fine-tuned rows of the real table, beside experiment=real_probe (issue 31).

Composition only (nothing trained): the preset must fine-tune every arm and fraction alike, and must train the
very pretexts real_probe trains (same store key), so the two tables compare one pretext under two protocols.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_dr.data.records import Record
from ssl_dr.pretexts.store import pretext_description, pretext_key
from ssl_dr.train import CONFIG_DIR
from tests.test_paper_preset import _compose, _jobs
from tests.test_real_cpu_preset import fine_tune_settings


def test_real_finetune_sweeps_baseline_and_rotation_fine_tuned_at_10_and_100_percent():
    cfg = _compose("experiment=real_finetune", "data.root=/nonexistent/idrid", hydra=True)
    params = cfg.hydra.sweeper.params
    assert cfg.sweep_name == "real_finetune" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert list(cfg.arms) == ["baseline", "rotation"] and list(cfg.protocols) == ["finetune"]
    assert params["data.label_fraction"] == "0.1,1.0" and params["data.fold"] == "0,1,2,3,4"
    assert str(params["data.split_seed"]) == "42"
    assert cfg.model.head == "regression" and cfg.trainer.max_steps == 300
    assert cfg.trainer.max_steps % cfg.trainer.val_check_interval == 0  # the last step is validated
    assert cfg.model.classifier.scheduler.total_steps == cfg.trainer.max_steps


def test_the_documented_partitions_command_runs_three_partitions():
    """The preset's header tells a user how to add partitions. Its override must reach data.split_seed: the
    first one written there (hydra.sweeper.params.data.split_seed=42,43,44) stopped Hydra with "Sweeping over
    Hydra's configuration is not supported". Read from the header, so the documented line is the one tested."""
    header = Path(CONFIG_DIR, "experiment", "real_finetune.yaml").read_text().splitlines()
    (command,) = [line for line in header if line.startswith("#") and "split_seed" in line and "python -m" in line]
    sweeps = tuple(word.strip("'\"") for word in command.split() if "split_seed" in word)
    jobs = _jobs("experiment=real_finetune", "data.root=/nonexistent/idrid", sweeps=sweeps)
    assert len(jobs) == 3 * 2 * 5 * 2
    assert [job[0] for job in jobs] == [f"data.split_seed={seed}" for seed in (42, 43, 44) for _ in range(20)]
    assert jobs[:20] == _jobs("experiment=real_finetune", "data.root=/nonexistent/idrid")  # partition 42 as before


def test_real_finetune_gives_every_arm_and_fraction_the_same_fine_tune():
    reference = fine_tune_settings("real_finetune", "arm=baseline", "data.label_fraction=1.0")
    for arm in ("baseline", "rotation"):
        for fraction in ("0.1", "1.0"):
            assert fine_tune_settings("real_finetune", f"arm={arm}", f"data.label_fraction={fraction}",
                                      "protocol=finetune") == reference


@pytest.mark.parametrize("arm", ["rotation", "simclr"])
def test_real_finetune_reuses_the_pretexts_real_probe_trains(tmp_path: Path, arm: str):
    """Same photographs and partition -> the same pretext store key under both presets, so a fine-tune sweep
    after a probe sweep (or the other way round) trains no pretext again."""
    pool = []
    for i in range(3):
        path = tmp_path / f"im{i}.png"
        path.write_bytes(bytes([i]) * 10)
        pool.append(Record(f"im{i}", path, None))

    def key(experiment: str, *overrides: str) -> str:
        cfg = _compose(f"experiment={experiment}", f"data.root={tmp_path}", f"arm={arm}", "data.split_seed=43",
                       f"paths.cache_dir={tmp_path / 'cache'}", *overrides)
        return pretext_key(pretext_description(cfg, pool))

    assert key("real_finetune") == key("real_probe")
    assert key("real_finetune", "pretext.max_epochs=7") != key("real_probe")  # the key does tell settings apart
