"""A weights file read once per job (``ssl_dr.models.weights_memo``): the check's tensors handed to the next build of
the same unchanged file, once, and let go of after."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ssl_dr.models import weights_memo
from ssl_dr.models.backbone import Backbone
from ssl_dr.models.foundation_weights import FoundationWeightsError
from ssl_dr.models.weights_memo import keeping_reads, read_weights
from tests.models.foundation_files import write_retfound_mae


@pytest.fixture
def counted(monkeypatch) -> list[Path]:
    """Every ``torch.load`` of a file, by path."""
    reads: list[Path] = []
    real_load = torch.load

    def load(file, *args, **kwargs):
        reads.append(Path(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    return reads


def reader(calls: list[Path]):
    def read(path: Path) -> dict:
        calls.append(path)
        return {"read": len(calls)}
    return read


def test_kept_tensors_are_handed_over_once(tmp_path):
    path, calls = tmp_path / "w.pth", []
    path.write_bytes(b"x")
    with keeping_reads():
        kept = read_weights(path, reader(calls))
    assert read_weights(path, reader(calls)) is kept and len(calls) == 1  # taken, not read
    assert weights_memo._KEPT.state is None  # let go of
    assert read_weights(path, reader(calls)) == {"read": 2}  # the next build reads the file


def test_a_rewritten_file_is_read_again_and_the_kept_one_let_go(tmp_path):
    path, calls = tmp_path / "w.pth", []
    path.write_bytes(b"x")
    with keeping_reads():
        read_weights(path, reader(calls))
    path.write_bytes(b"yy")
    os.utime(path, ns=(1, 1))
    assert read_weights(path, reader(calls)) == {"read": 2}
    assert weights_memo._KEPT.state is None


def test_a_failed_check_keeps_nothing(tmp_path):
    path, calls = tmp_path / "w.pth", []
    path.write_bytes(b"x")
    with pytest.raises(ValueError), keeping_reads():
        read_weights(path, reader(calls))
        raise ValueError("the file does not fit")
    assert weights_memo._KEPT.state is None


def test_a_foundation_file_is_read_once_for_the_check_and_the_build(tmp_path, counted):
    path = tmp_path / "mae.pth"
    write_retfound_mae(path, "vit_small_patch16_224")
    settings = {"name": "vit_small_patch16_224", "weights_format": "retfound_mae", "weights_file": path,
                "model_kwargs": {"img_size": 32, "global_pool": "avg"}}
    with keeping_reads():
        checked = Backbone(**settings)
    built = Backbone(**settings)
    assert counted.count(path) == 1
    for key, value in built.model.state_dict().items():
        if not key.startswith("fc_norm."):  # the fine-tune's fresh layer, drawn at random
            assert torch.equal(value, checked.model.state_dict()[key]), key
    Backbone(**settings)
    assert counted.count(path) == 2


def test_a_failed_foundation_check_keeps_nothing(tmp_path):
    path = tmp_path / "mae.pth"
    write_retfound_mae(path, "vit_small_patch16_224")
    with pytest.raises(FoundationWeightsError), keeping_reads():
        Backbone("vit_base_patch16_224", weights_format="retfound_mae", weights_file=path,
                 model_kwargs={"img_size": 32, "global_pool": "avg"})
    assert weights_memo._KEPT.state is None
