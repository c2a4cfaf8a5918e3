"""MAE pretext (``ssl_dr.pretexts.mae``): the encoder sees only visible patches, the loss and the retrieval
accuracy count hidden ones only, validation masks are fixed, and ``arm=mae`` trains, stores and fine-tunes a ViT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from ssl_dr.errors import ConfigError
from ssl_dr.pretexts import build_pretext
from ssl_dr.pretexts.mae import MAEPretext
from ssl_dr.train import train


@pytest.fixture
def mae(tiny_cfg) -> MAEPretext:
    cfg = tiny_cfg("experiment=mae")  # 32 px, 8 px patches: 16 patches, 4 visible
    torch.manual_seed(0)
    module = build_pretext(cfg, instantiate(cfg.model.backbone))
    assert isinstance(module, MAEPretext) and module.num_patches == 16 and module.keep == 4
    return module.eval()


def test_patches_round_trip_in_the_encoders_order(mae):
    images = torch.randn(2, 3, 32, 32)
    patches = mae.patchify(images)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(mae.unpatchify(patches, 32), images)
    # patch 1 is the second 8 x 8 square of the top row, as the patch embedding's convolution reads it
    assert torch.equal(patches[0, 1].reshape(8, 8, 3).permute(2, 0, 1), images[0, :, :8, 8:16])


def test_the_encoder_never_sees_a_hidden_patch(mae):
    """Changing the hidden patches' pixels changes the targets, never the reconstruction."""
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        predictions, targets, keep, hidden = mae._reconstruct(images, batch_idx=3)
        assert sorted(torch.cat([keep, hidden], dim=1)[0].tolist()) == list(range(16))
        changed = mae.patchify(images).clone()
        changed.scatter_(1, hidden[..., None].expand(-1, -1, changed.shape[-1]), 5.0)
        again, moved, _, _ = mae._reconstruct(mae.unpatchify(changed, 32), batch_idx=3)
    torch.testing.assert_close(again, predictions)
    assert not torch.allclose(moved, targets)


def test_loss_and_accuracy_count_hidden_patches_only(mae):
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        predictions, targets, _, hidden = mae._reconstruct(images, batch_idx=0)
        out = mae.step(images, 0)
    index = hidden[..., None].expand(-1, -1, targets.shape[-1])
    assert out.loss == pytest.approx(float(((predictions.gather(1, index) - targets.gather(1, index)) ** 2).mean()))
    assert out.scores.shape == (2 * 12, 12) and out.targets.tolist() == list(range(12)) * 2  # 12 hidden each


def test_validation_masks_are_fixed_and_training_masks_are_drawn(mae):
    first, second = mae._masks(4, 7, torch.device("cpu")), mae._masks(4, 7, torch.device("cpu"))
    assert torch.equal(first[0], second[0])
    mae.train()
    assert not torch.equal(mae._masks(4, 7, torch.device("cpu"))[0], mae._masks(4, 7, torch.device("cpu"))[0])


def test_a_densenet_backbone_is_refused(tiny_cfg):
    cfg = tiny_cfg("experiment=rotation", "pretext=mae")
    with pytest.raises(ConfigError, match=r"pretext=mae needs a ViT backbone .* not densenet121"):
        build_pretext(cfg, instantiate(cfg.model.backbone))


def test_the_mae_arm_pretrains_stores_and_fine_tunes_a_vit(tiny_cfg):
    result = train(tiny_cfg("experiment=mae"))
    assert result["arm"] == "mae" and result["init"] == "pretext" and not result["pretext/reused"]
    assert 0 <= result["pretext/val_acc"] <= 1
    stored = torch.load(result["init/weights"], weights_only=True)["state_dict"]
    assert "blocks.0.attn.qkv.weight" in stored and not any(k.startswith("decoder") for k in stored)
    spec = torch.load(Path(result["output_dir"]) / "checkpoints" / "best.ckpt", weights_only=True,
                      map_location="cpu")["hyper_parameters"]["inference"]
    assert spec["backbone"] == "vit_small_patch8_224" and spec["model_kwargs"]["global_pool"] == "avg"
    again = train(tiny_cfg("experiment=mae", run="again"))
    assert again["pretext/reused"] and again["pretext/key"] == result["pretext/key"]


def test_a_paper_cpu_sweep_job_of_the_mae_arm_is_a_vit_with_its_pretext():
    """How ``experiment=paper_cpu 'arms=[rotation,mae,baseline]'`` composes its mae jobs: the arm picks its pretext
    and its ViT; the rest is the sweep's (image size, budget)."""
    from tests.conftest import compose_cfg

    cfg = compose_cfg(Path("/tmp"), ["experiment=paper_cpu", "arm=mae"])
    rotation = compose_cfg(Path("/tmp"), ["experiment=paper_cpu", "arm=rotation"])
    assert cfg.pretext.name == "mae" and cfg.model.backbone.name == "vit_small_patch8_224"
    assert cfg.model.backbone.model_kwargs.img_size == cfg.data.image_size == rotation.data.image_size == 64
    assert cfg.trainer.max_steps == rotation.trainer.max_steps and rotation.model.backbone.name == "densenet121"
