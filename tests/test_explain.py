"""``ssl_dr.explain``: one overlay PNG per image and an index, for every head (the Grad-CAM maps, the overlays'
heat on the field of view and the captions are ``ssl_dr.inference.grad_cam``'s: tests/inference/test_grad_cam.py)."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import pandas as pd
import pytest

from ssl_dr.explain import main as explain_main
from ssl_dr.inference.grad_cam import MIN_SIDE
from tests.tiny_grader import TinyRun, one_thread, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[TinyRun]:
    with one_thread():
        yield tiny_run(tmp_path_factory)


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
    printed = capsys.readouterr().out
    assert "3 Grad-CAM overlay(s)" in printed
    # 32 px: DenseNet121's map is one cell; still drawn (asked for), with a warning
    assert "warning: Grad-CAM of backbone.model.features: the feature map is 1x1 at 32 px; use >= 128 px" in printed

    explain_main([f"ckpt={run.ckpt}", f"images={run.data / 'test.csv'}", f"out={tmp_path / 'g4'}", "grade=4",
                  "limit=2", "device=cpu"])
    chosen = pd.read_csv(tmp_path / "g4" / "index.csv")
    assert len(chosen) == 2 and (chosen.cam_grade == 4).all()


@pytest.mark.parametrize("head", ["ordinal", "regression"])
def test_explain_writes_the_other_heads_overlays(head, tmp_path_factory, tmp_path):
    """Ordinal/regression graders: overlays with probabilities or the score (their maps: tests/inference)."""
    with one_thread():
        other = tiny_run(tmp_path_factory, head)
        explain_main([f"ckpt={other.ckpt}", f"images={other.data / 'train_images'}", f"out={tmp_path / 'cam'}",
                      "limit=2", "device=cpu"])
    index = pd.read_csv(tmp_path / "cam" / "index.csv", dtype={"id_code": str})
    assert len(index) == 2 and (index.pred == index.cam_grade).all()
    columns = ["score"] if head == "regression" else ["prob", "cam_prob"]
    assert set(columns) <= set(index.columns) and index[columns].notna().all().all()
