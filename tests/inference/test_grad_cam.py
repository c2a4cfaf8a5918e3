"""``ssl_dr.inference.grad_cam``: Grad-CAM against a hook-free computation (DenseNet, each head, ViTs), heat on the
field of view only, and the captions and coarse-map note the W&B table shares."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ssl_dr.inference import InferenceError
from ssl_dr.inference.grad_cam import caption, coarse_map, field_of_view, find_target_layer, grad_cam, overlay
from tests.tiny_grader import one_thread, tiny_run


def test_auto_layer_is_the_feature_map_before_pooling(run):
    backbone = run.model.backbone.model
    assert find_target_layer(run.model, backbone, run.spec.image_size) == "backbone.model.features"
    assert find_target_layer(run.model, backbone, 32, "backbone.model.features.denseblock3") == \
        "backbone.model.features.denseblock3"
    with pytest.raises(InferenceError, match="not a module"):
        find_target_layer(run.model, backbone, 32, "backbone.nope")


def test_grad_cam_matches_autograd_on_the_feature_map(run):
    model, timm_model = run.model, run.model.backbone.model
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # 64 px: a 2 x 2 map
    grades = torch.tensor([0, 2, 4])
    cams, probs, targets = grad_cam(model, timm_model.features, images, grades)  # classification: probs

    features = timm_model.forward_features(images)
    logits = model.head(timm_model.forward_head(features))
    gradient, = torch.autograd.grad(logits.gather(1, grades[:, None]).sum(), features)
    expected = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1)).detach()
    expected = expected / expected.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    assert cams.shape == (3, 2, 2) and torch.equal(targets, grades)
    torch.testing.assert_close(cams, expected)
    torch.testing.assert_close(probs, logits.softmax(dim=1).detach())
    assert cams.min() >= 0 and cams.max() <= 1


@pytest.mark.parametrize("head", ["ordinal", "regression"])
def test_grad_cam_follows_the_heads_evidence(head, tmp_path_factory):
    """Ordinal/regression: the map is Grad-CAM of ``grading.evidence`` (threshold logit / signed score)."""
    with one_thread():
        other = tiny_run(tmp_path_factory, head)
        model, timm_model = other.model, other.model.backbone.model
        images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        grades = torch.tensor([0, 2, 4])
        cams, activated, targets = grad_cam(model, timm_model.features, images, grades)
        features = timm_model.forward_features(images)
        outputs = model.head(timm_model.forward_head(features))
        gradient, = torch.autograd.grad(model.grading.evidence(outputs, grades).sum(), features)
        expected = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1)).detach()
        peak = expected.amax(dim=(1, 2), keepdim=True)
        expected = torch.where(peak > 0, expected / peak.clamp_min(1e-12), torch.zeros_like(expected))
        torch.testing.assert_close(cams, expected)
        torch.testing.assert_close(activated, model.grading.activate(outputs.detach()))
        assert torch.equal(targets, grades)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("vit_small_patch16_224", {"img_size": 64, "global_pool": "avg"}),  # RETFound's pooling
    ("vit_small_patch14_reg4_dinov2", {"img_size": 56, "global_pool": "token"}),  # class token, 4 registers
])
def test_grad_cam_of_a_vit_reads_the_patch_tokens_of_its_last_block(name, kwargs):
    """A ViT's map is Grad-CAM of the last block's ``norm1`` output, its patch tokens laid out on the 4 x 4 grid
    (class and register tokens left out), computed here by hand through the rest of the network."""
    from ssl_dr.models.backbone import Backbone
    from ssl_dr.models.classifier import DRClassifier

    torch.manual_seed(0)
    model = DRClassifier(Backbone(name, model_kwargs=kwargs)).eval()
    vit = model.backbone.model
    layer_name = find_target_layer(model, vit, kwargs["img_size"])
    assert layer_name == f"backbone.model.blocks.{len(vit.blocks) - 1}.norm1"
    images = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"], generator=torch.Generator().manual_seed(1))
    grades = torch.tensor([1, 3])
    cams, _, _ = grad_cam(model, dict(model.named_modules())[layer_name], images, grades)

    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    for block in vit.blocks[:-1]:
        x = block(x)
    last = vit.blocks[-1]
    tokens = last.norm1(x).detach().requires_grad_(True)
    x = x + last.ls1(last.attn(tokens))
    x = x + last.ls2(last.mlp(last.norm2(x)))
    logits = model.head(vit.forward_head(vit.norm(x)))
    gradient, = torch.autograd.grad(logits.gather(1, grades[:, None]).sum(), tokens)
    patches, weights = tokens[:, vit.num_prefix_tokens:].detach(), gradient[:, vit.num_prefix_tokens:]
    expected = torch.relu((weights.mean(dim=1, keepdim=True) * patches).sum(dim=2)).reshape(2, 4, 4)
    expected = expected / expected.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    assert cams.shape == (2, 4, 4) and cams.max() > 0
    torch.testing.assert_close(cams, expected)


def test_captions_name_the_true_grade_where_known_and_the_explained_one_where_it_differs():
    probs = [0.05, 0.12, 0.71, 0.1, 0.02]
    assert caption(2, 2, probs, true=1) == "true 1 / pred 2 (p=0.71)"
    assert caption(2, 2, probs) == "pred 2 (p=0.71)"
    assert caption(2, 1, probs, true=1) == "true 1 / pred 2 (p=0.71) | CAM 1 (p=0.12)"
    assert caption(2, 3, score=1.834) == "pred 2 (s=1.83) | CAM 3"


def test_heat_stays_on_the_field_of_view():
    """A fundus disc (with a dark lesion inside) on black: the overlay colours the disc, lesion included, and
    leaves every border pixel as it was, however coarse the map (bilinear upsampling spreads it everywhere)."""
    fundus = np.zeros((64, 64, 3), dtype=np.uint8)
    cv2.circle(fundus, (32, 32), 26, (180, 90, 40), -1)
    cv2.circle(fundus, (38, 30), 4, (0, 0, 0), -1)  # a dark lesion: inside the field of view
    side = 256
    drawn = overlay(fundus, np.ones((2, 2), dtype=np.float32), "true 2 / pred 2 (p=0.90)", side)
    shown = cv2.resize(fundus, (side, side), interpolation=cv2.INTER_NEAREST)
    fov = field_of_view(shown)
    assert fov[38 * 4 + 2, 30 * 4 + 2] and not fov[2, 2]  # the lesion in, the corner out
    below_caption = np.zeros((side, side), dtype=bool)
    below_caption[40:] = True
    assert (drawn[~fov & below_caption] == 0).all()  # no heat on the black border
    assert (drawn[fov & below_caption] != shown[fov & below_caption]).any(axis=1).all()


def test_a_map_under_four_cells_a_side_is_called_too_coarse():
    assert coarse_map(torch.zeros(3, 2, 2), 64) == "the feature map is 2x2 at 64 px; use >= 128 px"
    assert coarse_map(torch.zeros(1, 1, 1), 32) == "the feature map is 1x1 at 32 px; use >= 128 px"
    assert coarse_map(torch.zeros(1, 4, 4), 128) is None and coarse_map(torch.zeros(1, 7, 7), 224) is None
