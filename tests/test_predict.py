"""``ssl_dr.predict``, on the session's tiny real grader (``tests/tiny_grader.py``): its output against the
training pipeline's own tensors, TTA, the stored temperature and referable threshold, bad images, and the commands'
errors. The shared ``ssl_dr.inference`` helpers are tested in ``tests/inference/``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_dr.data.cache import build_cache
from ssl_dr.data.records import Record
from ssl_dr.data.transforms import AugmentConfig, build_transform
from ssl_dr.explain import main as explain_main
from ssl_dr.export import main as export_main
from ssl_dr.inference.checkpoint import read_checkpoint
from ssl_dr.models.screening import temper
from ssl_dr.predict import PROB_COLUMNS, REFERABLE_COLUMN, REFERABLE_SCORE_COLUMN, SCORE_COLUMN
from ssl_dr.predict import main as predict_main
from ssl_dr.run_contract import VAL_PREDICTIONS
from tests.tiny_grader import (
    SUBPROCESS_ENV,
    TinyRun,
    one_thread,
    pipeline_tensors,
    screening_payload,
    tiny_run,
    with_screening,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[TinyRun]:
    with one_thread():
        yield tiny_run(tmp_path_factory)


def _predict(run: TinyRun, images: Path, out: Path, *extra: str, ckpt: Path | None = None) -> pd.DataFrame:
    predict_main([f"ckpt={ckpt or run.ckpt}", f"images={images}", f"out={out}", "device=cpu", *extra])
    return pd.read_csv(out, dtype={"id_code": str})


def test_folder_prediction_is_the_models_argmax_on_training_tensors(run, tmp_path):
    table = _predict(run, run.data / "train_images", tmp_path / "preds.csv", "probs=true", "batch_size=7")
    assert list(table.columns) == ["id_code", "diagnosis", *PROB_COLUMNS]
    assert list(table.id_code) == [p.stem for p in run.images]
    probs = table[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = run.model(pipeline_tensors(run, run.images, tmp_path / "cache")).softmax(dim=1).numpy()
    np.testing.assert_array_equal(table.diagnosis.to_numpy(), expected.argmax(axis=1))
    np.testing.assert_allclose(probs, expected, atol=2e-6)  # tta=none: the plain forward pass


def test_csv_input_reads_test_images_next_to_the_csv_in_csv_order(run, tmp_path):
    table = _predict(run, run.data / "test.csv", tmp_path / "sub.csv")
    assert list(table.columns) == ["id_code", "diagnosis"]  # the Kaggle submission format
    assert list(table.id_code) == list(pd.read_csv(run.data / "test.csv", dtype=str).id_code)
    assert table.diagnosis.between(0, 4).all()


def test_rot4_is_the_mean_softmax_over_the_four_rotations(run, tmp_path):
    paths = run.images[:5]
    folder = tmp_path / "few"
    folder.mkdir()
    for path in paths:
        shutil.copy(path, folder / path.name)
    table = _predict(run, folder, tmp_path / "rot4.csv", "probs=true", "tta=rot4")
    # manual: rotate the preprocessed uint8 image, then normalise (checks that TTA commutes with it)
    cache = build_cache([Record(p.stem, p, None) for p in paths], tmp_path / "cache", size=run.spec.image_size,
                        ben_graham=run.spec.ben_graham, num_workers=0)
    transform = build_transform("eval", run.spec.image_size, run.spec.mean, run.spec.std, AugmentConfig(), seed=0)
    with torch.no_grad():
        views = [torch.stack([transform(image=np.ascontiguousarray(np.rot90(cache.image(p.stem), k)))["image"]
                              for p in paths]) for k in range(4)]
        manual = torch.stack([run.model(v).softmax(dim=1) for v in views]).mean(dim=0).numpy()
    np.testing.assert_allclose(table[PROB_COLUMNS].to_numpy(), manual, atol=2e-6)
    np.testing.assert_array_equal(table.diagnosis.to_numpy(), manual.argmax(axis=1))


@pytest.mark.parametrize("head", ["ordinal", "regression"])
def test_other_heads_average_their_activation_over_tta_then_decode(head, tmp_path_factory, tmp_path):
    """Ordinal: mean threshold sigmoids -> count above 0.5 and cumulative probabilities; regression: mean
    score -> the checkpoint's tuned thresholds; ``referable=true`` thresholds the head's own referable score of
    the mean. Nothing about the head is passed by the user."""
    with one_thread():
        other = tiny_run(tmp_path_factory, head)
        paths = other.images[:6]
        folder = tmp_path / "few"
        folder.mkdir()
        for path in paths:
            shutil.copy(path, folder / path.name)
        table = _predict(other, folder, tmp_path / "preds.csv", "probs=true", "tta=flip")
        x = pipeline_tensors(other, paths, tmp_path / "cache")
        model = other.model
        with torch.no_grad():
            mean = (model.grading.activate(model(x)) + model.grading.activate(model(x.flip(-1)))) / 2
        score = model.grading.referable(mean).numpy()  # the head's own: sigmoid of "grade >= 2", or the score
        middle = float(np.sort(score)[2:4].mean())
        ckpt = with_screening(other.ckpt, tmp_path / "screened.ckpt",
                              screening_payload(None, middle, {"sensitivity": 0.9}))
        refer = _predict(other, folder, tmp_path / "refer.csv", "referable=true", "tta=flip", ckpt=ckpt)
    np.testing.assert_allclose(refer[REFERABLE_SCORE_COLUMN].to_numpy(), score, atol=2e-6)
    np.testing.assert_array_equal(refer[REFERABLE_COLUMN].to_numpy(), (score >= middle).astype(int))
    assert list(table.id_code) == [p.stem for p in paths]
    if head == "ordinal":
        assert list(table.columns) == ["id_code", "diagnosis", *PROB_COLUMNS]
        np.testing.assert_array_equal(table.diagnosis.to_numpy(), (mean > 0.5).sum(dim=1).numpy())
        np.testing.assert_allclose(table[PROB_COLUMNS].to_numpy(), model.grading.probs(mean).numpy(), atol=2e-6)
        np.testing.assert_allclose(table[PROB_COLUMNS].sum(axis=1), 1.0, atol=1e-5)
    else:
        stored = torch.load(other.ckpt, map_location="cpu", weights_only=True)["state_dict"]["grading.thresholds"]
        assert list(table.columns) == ["id_code", "diagnosis", SCORE_COLUMN]
        np.testing.assert_allclose(table[SCORE_COLUMN].to_numpy(), mean.numpy(), atol=2e-6)
        expected = np.searchsorted(stored.numpy(), mean.numpy(), side="left")  # thresholds strictly below
        np.testing.assert_array_equal(table.diagnosis.to_numpy(), expected)


def few_images(run: TinyRun, folder: Path, count: int = 8) -> list[Path]:
    folder.mkdir()
    return [Path(shutil.copy(path, folder / path.name)) for path in run.images[:count]]


def test_the_stored_temperature_tempers_the_probabilities_and_never_the_grades(run, tmp_path, capsys):
    paths = few_images(run, tmp_path / "few")
    raw_ckpt = with_screening(run.ckpt, tmp_path / "raw.ckpt", None)
    warm_ckpt = with_screening(run.ckpt, tmp_path / "warm.ckpt", screening_payload(temperature=2.5))
    raw = _predict(run, tmp_path / "few", tmp_path / "raw.csv", "probs=true", ckpt=raw_ckpt)
    assert ", temperature" not in capsys.readouterr().out
    warm = _predict(run, tmp_path / "few", tmp_path / "warm.csv", "probs=true", ckpt=warm_ckpt)
    assert "temperature 2.5," in capsys.readouterr().out
    with torch.no_grad():
        logits = run.model(pipeline_tensors(run, paths, tmp_path / "cache"))
    np.testing.assert_allclose(warm[PROB_COLUMNS].to_numpy(), (logits / 2.5).softmax(dim=1).numpy(), atol=2e-6)
    by_hand = torch.from_numpy(raw[PROB_COLUMNS].to_numpy()).log().div(2.5).softmax(dim=1).numpy()
    np.testing.assert_allclose(warm[PROB_COLUMNS].to_numpy(), by_hand, atol=1e-5)  # softmax(log p / T)
    assert not np.allclose(warm[PROB_COLUMNS].to_numpy(), raw[PROB_COLUMNS].to_numpy(), atol=1e-3)
    np.testing.assert_array_equal(warm.diagnosis.to_numpy(), raw.diagnosis.to_numpy())
    np.testing.assert_array_equal(warm.diagnosis.to_numpy(), logits.argmax(dim=1).numpy())


def test_referable_is_the_tta_averaged_tempered_score_at_the_stored_threshold(run, tmp_path, capsys):
    paths = few_images(run, tmp_path / "few")
    x = pipeline_tensors(run, paths, tmp_path / "cache")
    with torch.no_grad():
        mean = (run.model(x).softmax(dim=1) + run.model(x.flip(-1)).softmax(dim=1)) / 2
    score = mean.double().log().div(1.5).softmax(dim=1)[:, 2:].sum(dim=1).numpy()
    middle = np.sort(score)[len(score) // 2 - 1: len(score) // 2 + 1].mean()  # between two images: both sides
    ckpt = with_screening(run.ckpt, tmp_path / "screened.ckpt",
                          screening_payload(1.5, float(middle), {"sensitivity": 0.9}))
    table = _predict(run, tmp_path / "few", tmp_path / "refer.csv", "referable=true", "tta=flip", ckpt=ckpt)
    assert list(table.columns) == ["id_code", "diagnosis", REFERABLE_SCORE_COLUMN, REFERABLE_COLUMN]
    np.testing.assert_allclose(table[REFERABLE_SCORE_COLUMN].to_numpy(), score, atol=2e-6)
    np.testing.assert_array_equal(table[REFERABLE_COLUMN].to_numpy(), (score >= middle).astype(int))
    assert table[REFERABLE_COLUMN].sum() == len(paths) // 2
    np.testing.assert_array_equal(table.diagnosis.to_numpy(), mean.argmax(dim=1).numpy())
    out = capsys.readouterr().out
    assert f"temperature 1.5, referable at score >= {middle:.6g} (sensitivity 0.9 on validation)" in out


def test_predict_scores_the_validation_images_as_training_chose_the_threshold_on_them(run, tmp_path):
    """The threshold was chosen on ``val_predictions.csv``'s referable scores (tempered from its p0..p4 when a
    temperature was fitted, ``ssl_dr.training.screening``): predict gives the same scores for those images."""
    val = pd.read_csv(Path(run.metrics["output_dir"]) / VAL_PREDICTIONS, dtype={"id_code": str})
    csv = tmp_path / "val.csv"
    val[["id_code"]].to_csv(csv, index=False)
    fitted_on = {None: val.referable.to_numpy(), 1.5: temper(val[PROB_COLUMNS].to_numpy(), 1.5)[:, 2:].sum(axis=1)}
    for temperature, expected in fitted_on.items():
        ckpt = with_screening(run.ckpt, tmp_path / f"T{temperature}.ckpt",
                              screening_payload(temperature, 0.5, {"sensitivity": 0.9}))
        table = _predict(run, csv, tmp_path / "val_preds.csv", "referable=true",
                         f"image_dir={run.data / 'train_images'}", ckpt=ckpt)
        assert list(table.id_code) == list(val.id_code)
        np.testing.assert_allclose(table[REFERABLE_SCORE_COLUMN].to_numpy(), expected, atol=2e-6)


@pytest.mark.parametrize("screening, why", [
    (None, "stores no referable-DR threshold (written before checkpoints stored one)"),
    (screening_payload(), "stores no referable-DR threshold (trained with evaluation.referable_target=null)"),
    (screening_payload(target={"specificity": 0.8}),
     "stores a NaN referable-DR threshold (target {'specificity': 0.8}: its validation slice had referable or "
     "non-referable images only)"),
])
def test_referable_without_a_finite_stored_threshold_is_one_error_naming_the_checkpoint(screening, why, run,
                                                                                       tmp_path, capsys):
    ckpt = with_screening(run.ckpt, tmp_path / "plain.ckpt", screening)
    with pytest.raises(SystemExit) as exit_info:
        _predict(run, run.data / "train_images", tmp_path / "o.csv", "referable=true", ckpt=ckpt)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: referable=true: {ckpt} {why}")
    assert "re-train with evaluation.referable_target set" in err and not (tmp_path / "o.csv").exists()


def test_a_checkpoint_without_screening_settings_predicts_as_before(run, tmp_path):
    """No key: the plain softmax, no extra columns, no error without referable=true; a stored threshold alone
    (no temperature) changes nothing either unless referable=true asks for it."""
    paths = few_images(run, tmp_path / "few")
    old = with_screening(run.ckpt, tmp_path / "old.ckpt", None)
    assert read_checkpoint(old)[1] is None
    table = _predict(run, tmp_path / "few", tmp_path / "old.csv", "probs=true", ckpt=old)
    assert list(table.columns) == ["id_code", "diagnosis", *PROB_COLUMNS]
    with torch.no_grad():
        expected = run.model(pipeline_tensors(run, paths, tmp_path / "cache")).softmax(dim=1).numpy()
    np.testing.assert_allclose(table[PROB_COLUMNS].to_numpy(), expected, atol=2e-6)
    thresholded = with_screening(run.ckpt, tmp_path / "new.ckpt",
                                 screening_payload(threshold=0.3, target={"sensitivity": 0.9}))
    pd.testing.assert_frame_equal(_predict(run, tmp_path / "few", tmp_path / "new.csv", "probs=true",
                                           ckpt=thresholded), table)


def _bad_folder(run: TinyRun, folder: Path) -> Path:
    folder.mkdir()
    for path in run.images[:3]:
        shutil.copy(path, folder / path.name)
    (folder / "garbage.png").write_bytes(b"not an image at all")
    (folder / "truncated.png").write_bytes(run.images[0].read_bytes()[:150])
    return folder


def test_bad_images_are_all_named_in_one_error_before_predicting(run, tmp_path, capsys):
    folder = _bad_folder(run, tmp_path / "bad")
    with pytest.raises(SystemExit) as exit_info:
        _predict(run, folder, tmp_path / "preds.csv")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    err = err[err.index("error: "):]  # after the progress bar of the decoding pass
    assert err.startswith("error: 2 of 5 image(s) cannot be read, nothing was predicted")
    assert "garbage.png" in err and "truncated.png" in err and "skip_bad=true" in err
    assert not (tmp_path / "preds.csv").exists()


def test_skip_bad_lists_skipped_images_in_a_side_file(run, tmp_path, capsys):
    folder = _bad_folder(run, tmp_path / "bad")
    table = _predict(run, folder, tmp_path / "preds.csv", "skip_bad=true")
    assert list(table.id_code) == [p.stem for p in run.images[:3]]
    skipped = pd.read_csv(tmp_path / "preds.skipped.csv")
    assert list(skipped.columns) == ["id_code", "path", "error"]
    assert sorted(skipped.id_code) == ["garbage", "truncated"]
    assert all(Path(p).name in e for p, e in zip(skipped.path, skipped.error, strict=True))
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().out


def test_missing_csv_images_are_bad_images_too(run, tmp_path, capsys):
    csv = tmp_path / "test.csv"
    pd.DataFrame({"id_code": [run.images[0].stem, "nowhere"]}).to_csv(csv, index=False)
    with pytest.raises(SystemExit):
        _predict(run, csv, tmp_path / "preds.csv", f"image_dir={run.data / 'train_images'}")
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.e2e
def test_cli_errors_are_one_line_exit_2_without_traceback(run, tmp_path):
    """Real subprocesses (run concurrently): the message reaches the user exactly as printed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    base = [f"images={run.data / 'train_images'}", f"out={tmp_path / 'o.csv'}"]
    cases = {
        "not found": ["ssl_dr.predict", f"ckpt={tmp_path / 'missing.ckpt'}", *base],
        "is not a DRClassifier checkpoint": ["ssl_dr.predict", f"ckpt={foreign}", *base],
        "no png/jpg/jpeg/tif/tiff images in": ["ssl_dr.predict", f"ckpt={run.ckpt}", f"images={empty}",
                                               f"out={tmp_path / 'o.csv'}"],
        "unknown argument 'tta_mode'": ["ssl_dr.predict", f"ckpt={run.ckpt}", *base, "tta_mode=flip"],
    }
    procs = {expected: subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=SUBPROCESS_ENV) for expected, argv in cases.items()}
    for expected, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (expected, err)
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
        assert "Traceback" not in err + out


def test_explain_and_export_share_the_error_handling(run, capsys):
    base = [f"ckpt={run.ckpt}", f"images={run.data / 'train_images'}", "out=unused"]
    for main, argv, expected in [(explain_main, [*base, "grade=5"], "grade='5' must be one of"),
                                 (export_main, [f"ckpt={run.ckpt}"], "missing required argument(s): out=")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(f"error: {expected}") and err.count("\n") == 1
