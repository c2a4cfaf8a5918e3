"""``ssl_dr.inference.tta``: the test-time augmentation views and the mean activation over them."""

from __future__ import annotations

import torch

from ssl_dr.inference import predict_activated, tta_views


def test_tta_views(run):
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert len(tta_views(images, "none")) == 1 and torch.equal(tta_views(images, "none")[0], images)
    assert len(tta_views(images, "flip")) == 2 and len(tta_views(images, "rot4")) == 4
    dihedral = tta_views(images, "flip_rot4")
    assert len({tuple(v.flatten().tolist()) for v in dihedral}) == 8  # the 8 symmetries, all distinct
    with torch.no_grad():
        x = torch.randn(2, 3, run.spec.image_size, run.spec.image_size)
        torch.testing.assert_close(predict_activated(run.model, x, "none"), run.model(x).softmax(dim=1))
        flip = (run.model(x).softmax(dim=1) + run.model(x.flip(-1)).softmax(dim=1)) / 2
        torch.testing.assert_close(predict_activated(run.model, x, "flip"), flip)
