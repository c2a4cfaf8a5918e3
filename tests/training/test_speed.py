"""The ``scale`` callback (``ssl_dr.training.speed``): channels_last, compile and gradient checkpointing change the
model as configured and keep its outputs and weight-file keys."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ssl_dr.models.backbone import Backbone
from ssl_dr.training.speed import ScaleCallback
from tests.launch.configs import compose_train


class Tiny(nn.Module):
    """The shape the callback expects of our modules: ``.backbone`` is an ssl_dr Backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone("resnet10t")  # random init, nothing downloaded

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster when other jobs load the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cpu_trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))


def conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def test_channels_last_converts_the_model_and_keeps_its_outputs(tmp_path):
    module = Tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    before = module(images)
    ScaleCallback(channels_last=True).setup(cpu_trainer(tmp_path), module, "fit")
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(module))
    assert torch.allclose(module(images), before, atol=1e-5)


def test_channels_last_auto_is_off_on_cpu_and_test_stage_is_untouched(tmp_path):
    module = Tiny()
    ScaleCallback(channels_last="auto").setup(cpu_trainer(tmp_path), module, "fit")
    ScaleCallback(channels_last=True).setup(cpu_trainer(tmp_path), module, "test")
    assert all(w.is_contiguous() for w in conv_weights(module))  # still NCHW


def test_grad_checkpointing_recomputes_blocks_in_backward(tmp_path):
    def forward_calls(module: Tiny) -> int:
        calls = []
        # a pre-hook: recomputation stops early, once it has rebuilt what backward needs
        handle = module.backbone.model.layer2[0].register_forward_pre_hook(lambda *_: calls.append(1))
        module(torch.randn(2, 3, 32, 32)).sum().backward()
        handle.remove()
        return len(calls)

    plain, checkpointed = Tiny(), Tiny()
    ScaleCallback(channels_last=False, grad_checkpointing=True).setup(cpu_trainer(tmp_path), checkpointed, "fit")
    assert forward_calls(plain) == 1 and forward_calls(checkpointed) == 2


def test_compile_is_in_place_so_weight_files_keep_their_keys(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: compiled.append(fn) or fn)  # no real compile on CPU
    module = Tiny()
    keys = list(module.backbone.model.state_dict())
    ScaleCallback(channels_last=False, compile=True).setup(cpu_trainer(tmp_path), module, "fit")
    assert len(compiled) == 1 and list(module.backbone.model.state_dict()) == keys


def test_scale_group_and_bad_values():
    callback = instantiate(compose_train().scale)
    assert isinstance(callback, ScaleCallback)
    assert (callback.channels_last, callback.compile, callback.grad_checkpointing) == ("auto", False, False)
    with pytest.raises(ValueError, match="channels_last"):
        ScaleCallback(channels_last="yes")
    with pytest.raises(TypeError, match="backbone"):
        ScaleCallback(channels_last=True).setup(None, nn.Linear(2, 2), "fit")
