"""A checkpoint is replaced whole or not at all (``ssl_dr.training.checkpoint_io``)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ssl_dr.training.checkpoint_io import AtomicCheckpointIO


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 20}, path)
    assert io.load_checkpoint(path)["global_step"] == 20

    def dies_midway(self, checkpoint, target, storage_options=None):
        open(target, "wb").write(b"half a checkpo")  # what a SIGKILL during torch.save leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 40}, path)
    assert torch.load(path, weights_only=False)["global_step"] == 20  # still readable, still the old one
    monkeypatch.undo()
    io.save_checkpoint({"global_step": 40}, path)
    assert io.load_checkpoint(path)["global_step"] == 40
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["last.ckpt"]


def test_every_trainer_config_writes_checkpoints_atomically(tiny_cfg):
    from hydra.utils import instantiate

    trainer = instantiate(tiny_cfg().trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
