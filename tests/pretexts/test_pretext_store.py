"""The pretext store key: every setting that shapes the weights, none that only changes speed."""

from __future__ import annotations

import os

from ssl_dr.data.records import Record
from ssl_dr.pretexts.store import pretext_key
from ssl_dr.training.phases import pretext_description


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
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, rewritten later
    assert _key(tiny_cfg, pool) != base


def _file(path):
    path.write_bytes(b"not an image, only its size and time count here")
    return path
