"""The pretext store: its key (every setting that shapes the weights, none that only changes speed) and reuse."""

from __future__ import annotations

import json
import os

import pytest

from ssl_dr.data.records import Record
from ssl_dr.models.backbone import BackboneWeightsError
from ssl_dr.pretexts.store import SUMMARY_NAME, WEIGHTS_NAME, entry_dir, pretext_description, pretext_key, stored_meta


def _key(tiny_cfg, pool, *overrides: str) -> str:
    return pretext_key(pretext_description(tiny_cfg("experiment=rotation", *overrides), pool))


def test_speed_settings_do_not_retrain_the_pretext(tiny_cfg, tmp_path):
    pool = [Record("a", _file(tmp_path / "a.png"), None)]
    base = _key(tiny_cfg, pool)
    for speed in ("data.preprocess.num_workers=1", "data.num_workers=2", "scale.compile=true",
                  "scale.grad_checkpointing=true"):
        assert _key(tiny_cfg, pool, speed) == base, speed


def test_settings_that_shape_the_weights_change_the_key(tiny_cfg, tmp_path):
    path = _file(tmp_path / "a.png")
    pool = [Record("a", path, None)]
    base = _key(tiny_cfg, pool)
    # data.split_seed draws the pretext's held-out slice; the process count sets the global batch and, by the
    # learning-rate rule, the step size
    for shaping in ("data.split_seed=7", "trainer.devices=2", "pretext.module.lr_scaling=none", "seed=1",
                    "data.image_size=48"):
        assert _key(tiny_cfg, pool, shaping) != base, shaping
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: the same pretext
    assert _key(tiny_cfg, pool) == base
    path.write_bytes(path.read_bytes()[::-1])  # same size, other bytes: another pool
    assert _key(tiny_cfg, pool) != base


def _file(path):
    path.write_bytes(b"not an image, only its bytes count here")
    return path


def test_a_reusing_job_takes_the_metrics_from_the_summary_not_the_weights_file(tiny_cfg, tmp_path):
    entry = entry_dir(tmp_path, "k")
    entry.mkdir(parents=True)
    (entry / WEIGHTS_NAME).write_bytes(b"not read")  # the fine-tune loads the weights; reuse must not read them too
    (entry / SUMMARY_NAME).write_text(json.dumps({"key": "k", "description": {}, "pretext/val_acc": 0.8}))
    cfg = tiny_cfg("experiment=rotation")
    assert stored_meta(tmp_path, "k", cfg) == {"pretext/val_acc": 0.8}
    (entry / SUMMARY_NAME).unlink()  # killed between the two writes: the weights file's own meta, read once
    with pytest.raises(BackboneWeightsError, match="not a readable weights file"):
        stored_meta(tmp_path, "k", cfg)
