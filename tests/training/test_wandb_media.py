"""W&B pictures and artifacts (``ssl_dr.training.wandb_media``, ``wandb_artifacts``), read back from the offline
runs' own files: the fine-tune's predictions table (thumbnails, grades, probabilities, Grad-CAM), its referable
ROC/PR curves and per-grade table, the pretext's grid of what it saw, the weights each phase logs, the fine-tune's
reference to its pretext, and the log's last word on where the offline runs are."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from sklearn.metrics import precision_recall_curve, roc_curve
from wandb import errors as wandb_errors

from ssl_dr.pretexts import build_pretext
from ssl_dr.train import train
from ssl_dr.training.wandb_artifacts import link_pretext
from ssl_dr.training.wandb_media import THUMBNAIL_SIDE, MediaConfig, pretext_grid, sample_by_grade
from ssl_dr.training.wandb_publish import media_config
from tests import wandb_records
from tests.conftest import TINY


@pytest.fixture
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_the_sample_takes_one_grade_after_another_so_rare_grades_are_in_it():
    grades = [0, 0, 0, 0, 2, 0, 4, 2, 0, 1]
    assert sample_by_grade(grades, 5) == [0, 9, 4, 6, 1]  # first 0, first 1, first 2, first 4, second 0
    assert sample_by_grade(grades, 7) == [0, 9, 4, 6, 1, 7, 2]
    assert sorted(sample_by_grade(grades, 50)) == list(range(len(grades)))
    assert sample_by_grade(grades, 0) == []


def test_media_counts_must_be_whole_numbers(tiny_cfg):
    assert media_config(tiny_cfg()) == MediaConfig()
    with pytest.raises(ValueError, match=r"media.grad_cam=-1"):
        media_config(tiny_cfg("media.grad_cam=-1"))
    with pytest.raises(ValueError, match=r"media.predictions"):
        train(tiny_cfg("media.predictions=-3"))  # before any data work


def _runs(out: Path) -> dict[str, Path]:
    return {("pretext" if "-pretext-" in d.name else "finetune"): d for d in (out / "wandb").glob("offline-run-*")}


def _png(path: Path):
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    return image


def test_a_run_shows_its_test_predictions_curves_per_grade_table_and_the_pretext_grid(tiny_cfg, wandb_offline,
                                                                                        caplog):
    overrides = [o for o in TINY if not o.startswith("logger=")]
    cfg = tiny_cfg("experiment=rotation", *overrides, "logger=default", "media.predictions=7", "media.grad_cam=3",
                   "media.pretext_grid=3")
    with caplog.at_level(logging.INFO, logger="ssl_dr"):
        out = Path(train(cfg)["output_dir"])
    runs = _runs(out)

    # the fine-tune: a fixed sample of the test fold, its rows the run's own test_predictions.csv
    predictions = pd.read_csv(out / "test_predictions.csv", dtype={"id_code": str})
    logged, files = wandb_records.table(runs["finetune"], "test/predictions")
    assert logged["columns"] == ["id_code", "image", "grade", "pred", "correct", "p0", "p1", "p2", "p3", "p4",
                                 "grad_cam"]
    sample = sample_by_grade(predictions["grade"].tolist(), 7)
    assert [row[0] for row in logged["data"]] == predictions["id_code"][sample].tolist()
    for row, (_, expected) in zip(logged["data"], predictions.loc[sample].iterrows(), strict=True):
        assert row[2:5] == [expected["grade"], expected["pred"], expected["grade"] == expected["pred"]]
        assert row[5:10] == pytest.approx([expected[f"p{k}"] for k in range(5)], abs=1e-4)
        assert _png(files[row[1]["path"]]).shape == (THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)  # 32 px, upscaled
    # 32 px: DenseNet121's last map is one cell, nothing to localise: no overlay, and the reason said once
    assert all(row[-1] is None for row in logged["data"])
    note = "Grad-CAM not drawn: the feature map is 1x1 at 32 px; use >= 128 px"
    assert [r.getMessage() for r in caplog.records].count(note) == 1
    assert wandb_records.summary(runs["finetune"])["media/grad_cam"] == note

    # the screening figures (issue 33): in the summary as in metrics.json, and the reliability diagram as a picture
    saved = json.loads((out / "metrics.json").read_text())
    summary = wandb_records.summary(runs["finetune"])["metrics.json"]
    for key in ("operating_point/threshold", "test/sensitivity_at_operating_point", "test/ece", "test/qwk_ci_low"):
        assert summary[key] == (None if saved[key] != saved[key] else pytest.approx(saved[key]))  # NaN: None
    (reliability,) = [row for row in wandb_records.history(runs["finetune"]) if "test/reliability/path" in row]
    assert _png(runs["finetune"] / "files" / reliability["test/reliability/path"]).shape[2] == 3

    # the referable curves: scikit-learn's points of test_predictions.csv; the per-grade table: metrics.json's
    truth, scores = predictions["grade"] >= 2, predictions["referable"]
    fpr, tpr, _ = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores)
    for key, points in (("roc_referable", (fpr, tpr)), ("pr_referable", (recall, precision))):
        curve, _ = wandb_records.table(runs["finetune"], f"test/{key}_table")
        np.testing.assert_allclose(np.array([row[1:] for row in curve["data"]]), np.column_stack(points))
        if key == "roc_referable":  # the area it names is metrics.json's (torchmetrics') AUROC
            assert float(curve["data"][0][0].removeprefix("AUROC ")) == pytest.approx(saved["test/auroc_referable"],
                                                                                      abs=5e-4)
    per_grade, _ = wandb_records.table(runs["finetune"], "test/per_grade")
    assert per_grade["columns"] == ["grade", "name", "support", "recall", "precision"]
    for grade, row in enumerate(per_grade["data"]):
        assert row[:3] == [grade, ("none", "mild", "moderate", "severe", "proliferative")[grade],
                           sum(saved["test/confusion"][grade])]
        for value, key in zip(row[3:], ("recall", "precision"), strict=True):
            expected = saved[f"test/{key}_grade{grade}"]
            assert value == (None if expected != expected else pytest.approx(expected))

    # the pretext: one picture, a column per held-out image and a row per rotation
    (logged_grid,) = [row for row in wandb_records.history(runs["pretext"]) if "pretext/examples/path" in row]
    grid = _png(runs["pretext"] / "files" / logged_grid["pretext/examples/path"])
    assert grid.shape == (4 * (THUMBNAIL_SIDE + 2) - 2, 3 * (THUMBNAIL_SIDE + 2) - 2, 3)
    assert "3 held-out images as the pretext sees them" in logged_grid["pretext/examples/caption"]

    # the log (train.log) ends with where each offline run is and the command that uploads it
    messages = [r.getMessage() for r in caplog.records]
    sync_lines = [m for m in messages if m.startswith("W&B offline run: ")]
    folders = [m.split("; upload with: wandb sync ")[-1].split(" (from a copy")[0] for m in sync_lines]
    assert sync_lines == [f"W&B offline run: {f}; upload with: wandb sync {f} (from a copy of the run folder: "
                          "python -m ssl_dr.wandb_sync <copy> first)" for f in folders]
    assert [Path(f).resolve() for f in folders] == [runs["pretext"].resolve(), runs["finetune"].resolve()]
    assert messages.index(sync_lines[-1]) >= len(messages) - 3  # only the result lines come after it


def test_grad_cam_at_128_px_is_captioned_with_the_true_grade_and_stays_off_the_border(tiny_cfg, wandb_offline):
    """At 128 px DenseNet121's map is 4 x 4: overlays are drawn, captioned ``true g / pred g (p=...)`` from the
    run's test_predictions.csv, and the black border around the fundus stays black."""
    overrides = [o for o in TINY if not o.startswith(("logger=", "data.image_size=", "data.source.image_size="))]
    cfg = tiny_cfg("experiment=baseline", *overrides, "data.image_size=128", "data.source.image_size=128",
                   "logger=default", "media.predictions=3", "media.grad_cam=2")
    out = Path(train(cfg)["output_dir"])
    run = _runs(out)["finetune"]
    predictions = pd.read_csv(out / "test_predictions.csv", dtype={"id_code": str}).set_index("id_code")
    logged, files = wandb_records.table(run, "test/predictions")
    overlays = [(row[0], row[-1]) for row in logged["data"]]
    assert all(o is not None for _, o in overlays[:2]) and overlays[2][1] is None
    assert "media/grad_cam" not in wandb_records.summary(run)
    for id_code, cell in overlays[:2]:
        expected = predictions.loc[id_code]
        grade, pred = int(expected["grade"]), int(expected["pred"])
        assert cell["caption"] == f"true {grade} / pred {pred} (p={expected[f'p{pred}']:.2f})"
        drawn = _png(files[cell["path"]])
        assert drawn.shape == (2 * THUMBNAIL_SIDE, 2 * THUMBNAIL_SIDE, 3)
        corners = np.concatenate([drawn[-8:, :8], drawn[-8:, -8:]])  # outside the disc, below the caption
        assert (corners == 0).all()


def test_media_can_be_turned_off_and_no_artifact_is_logged_by_default(tiny_cfg, wandb_offline):
    overrides = [o for o in TINY if not o.startswith("logger=")]
    out = Path(train(tiny_cfg("experiment=rotation", *overrides, "logger=default", "media.predictions=0",
                              "media.pretext_grid=0"))["output_dir"])
    runs = _runs(out)
    assert not any("pretext/examples/path" in row for row in wandb_records.history(runs["pretext"]))
    assert not any(a.type == "run_table" and any(e.path == "test/predictions.table.json" for e in a.manifest.contents)
                   for a in wandb_records.artifacts(runs["finetune"]))
    for run in runs.values():  # wandb_artifacts is off unless asked for
        assert not [a for a in wandb_records.artifacts(run) if a.type != "run_table"]


@pytest.mark.parametrize(("arm", "rows"), [("rotation", 4), ("jigsaw", 1), ("simclr", 2), ("mae", 2)])
def test_the_pretext_grid_shows_every_input_the_step_fed_with_its_answer(tiny_cfg, arm, rows):
    """The grid holds what ``step`` fed the network (a row per view of the same images) and counts its
    right answers exactly as the held-out accuracy would."""
    cfg = tiny_cfg(f"experiment={arm}")
    torch.manual_seed(0)
    module = build_pretext(cfg, instantiate(cfg.model.backbone))
    shape = (2, 3, 32, 32) if module.TRANSFORM == "contrastive" else (3, 32, 32)
    images = [torch.randn(shape) for _ in range(3)]
    grid, text = pretext_grid(module, images, 3, *module.backbone.normalization())
    assert grid.shape == (rows * (THUMBNAIL_SIDE + 2) - 2, 3 * (THUMBNAIL_SIDE + 2) - 2, 3)
    if arm == "mae":  # masked input, then reconstruction
        assert "masked input (top) and reconstruction (bottom)" in text
        return
    with torch.no_grad():
        step = module.step(torch.stack(images), 0)
    right = int((step.scores.argmax(dim=1) == step.targets).sum())
    assert f"({right}/{len(step.targets)} right)" in text
    assert json.dumps(text)  # a plain caption string


def test_artifacts_hold_the_pretext_backbone_and_the_tested_grader(tiny_cfg, wandb_offline):
    """``wandb_artifacts=true``: the pretext run logs its backbone under its store key, the fine-tune run its
    tested checkpoint byte for byte, and (offline, where W&B cannot link) names its pretext in the summary."""
    overrides = [o for o in TINY if not o.startswith("logger=")]
    result = train(tiny_cfg("experiment=rotation", *overrides, "logger=default", "wandb_artifacts=true",
                            "media.predictions=0", "media.pretext_grid=0"))
    out, key = Path(result["output_dir"]), result["pretext/key"]
    runs = _runs(out)

    (pretext,) = [a for a in wandb_records.artifacts(runs["pretext"]) if a.type == "pretext-backbone"]
    assert pretext.name == "pretext-rotation" and key in pretext.aliases
    (entry,) = pretext.manifest.contents
    stored, logged = (torch.load(path, weights_only=True)["state_dict"]
                      for path in (result["init/weights"], entry.local_path))
    assert stored.keys() == logged.keys() and all(torch.equal(stored[k], logged[k]) for k in stored)

    (grader,) = [a for a in wandb_records.artifacts(runs["finetune"]) if a.type == "model"]
    assert grader.name == "grader-rotation" and "frac1.0-fold0-split42-seed42" in grader.aliases
    (entry,) = grader.manifest.contents
    assert Path(entry.local_path).read_bytes() == (out / "checkpoints" / "best.ckpt").read_bytes()
    assert json.loads(grader.metadata)["test/qwk"] == pytest.approx(result["test/qwk"], abs=1e-6)

    summary = wandb_records.summary(runs["finetune"])
    assert summary["pretext/wandb_run_id"] == f"pretext-{key}" and runs["pretext"].name.endswith(f"-pretext-{key}")
    assert summary["pretext/artifact"] == f"pretext-rotation:{key}"


class _OnlineRun:
    """Stands in for W&B's server side only: records what the fine-tune asked W&B to link."""

    offline = False

    def __init__(self, known: set[str]) -> None:
        self.known, self.used = known, []

    def use_artifact(self, name: str) -> None:
        if name not in self.known:
            raise wandb_errors.CommError(f"artifact {name} not found")
        self.used.append(name)


def test_an_online_fine_tune_names_its_pretext_artifact_as_input(caplog):
    run = _OnlineRun({"pretext-rotation:abc123"})
    assert link_pretext(run, "rotation", "abc123") and run.used == ["pretext-rotation:abc123"]
    with caplog.at_level(logging.WARNING):
        assert not link_pretext(run, "rotation", "fff000")
    assert "pretext-rotation:fff000" in caplog.text and "wandb_artifacts=true" in caplog.text
