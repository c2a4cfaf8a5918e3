"""``ssl_dr.explain``: Grad-CAM against a hook-free computation, and one overlay PNG per image."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import pandas as pd
import pytest
import torch

from ssl_dr.explain import main as explain_main
from ssl_dr.inference import InferenceError
from ssl_dr.inference.grad_cam import MIN_SIDE, find_target_layer, grad_cam
from tests.test_predict import TinyRun, one_thread, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[TinyRun]:
    with one_thread():
        yield tiny_run(tmp_path_factory)


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


def test_explain_writes_one_overlay_per_image_and_an_index(run, tmp_path, capsys):
    out = tmp_path / "cam"
    explain_main([f"ckpt={run.ckpt}", f"images={run.data / 'train_images'}", f"out={out}", "limit=3",
                  "device=cpu"])
    index = pd.read_csv(out / "index.csv", dtype={"id_code": str})
    assert list(index.id_code) == [p.stem for p in run.images[:3]]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(index.overlay)
    side = max(run.spec.image_size, MIN_SIDE)
    for name in index.overlay:
        assert cv2.imread(str(out / name)).shape == (side, side, 3)
    assert (index.pred == index.cam_grade).all() and index.prob.between(0, 1).all()
    assert "3 Grad-CAM overlay(s)" in capsys.readouterr().out

    explain_main([f"ckpt={run.ckpt}", f"images={run.data / 'test.csv'}", f"out={tmp_path / 'g4'}", "grade=4",
                  "limit=2", "device=cpu"])
    chosen = pd.read_csv(tmp_path / "g4" / "index.csv")
    assert len(chosen) == 2 and (chosen.cam_grade == 4).all()


@pytest.mark.parametrize("head", ["ordinal", "regression"])
def test_grad_cam_follows_the_heads_evidence(head, tmp_path_factory, tmp_path):
    """Ordinal/regression: the map is Grad-CAM of ``grading.evidence`` (threshold logit / signed score),
    and the CLI writes their overlays with probabilities or the score."""
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

        explain_main([f"ckpt={other.ckpt}", f"images={other.data / 'train_images'}", f"out={tmp_path / 'cam'}",
                      "limit=2", "device=cpu"])
    index = pd.read_csv(tmp_path / "cam" / "index.csv", dtype={"id_code": str})
    assert len(index) == 2 and (index.pred == index.cam_grade).all()
    columns = ["score"] if head == "regression" else ["prob", "cam_prob"]
    assert set(columns) <= set(index.columns) and index[columns].notna().all().all()
