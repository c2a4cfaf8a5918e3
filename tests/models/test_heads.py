"""Grade heads (``model.head``), regression threshold tuning, and the paper's ``qw_kappa_kaggle`` variant.

Unit tests on hand-made tensors first; then the thresholds' provenance on a tiny Lightning fit (they come
from validation predictions only); then one tiny end-to-end ``train(cfg)`` per head through the real
config (shared with the predict/export/explain tests).
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_score, recall_score, roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from ssl_dr.models.backbone import Backbone
from ssl_dr.models.classifier import DRClassifier
from ssl_dr.models.heads import (
    DEFAULT_THRESHOLDS,
    HEADS,
    ClassificationHead,
    HeadError,
    OrdinalHead,
    RegressionHead,
    build_head,
    cut,
    grade_weights_for,
    ordinal_targets,
    tune_thresholds,
)
from ssl_dr.models.metrics import (
    KaggleKappa,
    ReferableAUROC,
    confusion_summary,
    kaggle_cumulative,
    kaggle_decode,
    quadratic_weighted_kappa,
    qw_kappa_kaggle,
)
from ssl_dr.run_contract import TEST_PREDICTIONS
from tests.tiny_grader import TinyRun, one_thread, tiny_run

LABELS = [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- heads

def test_ordinal_targets_are_k_leading_ones():
    assert ordinal_targets(torch.arange(5)).tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0],
                                                          [1, 1, 1, 1]]


def test_ordinal_decoding_counts_sigmoids_strictly_above_half():
    head = OrdinalHead()
    sigmoids = torch.tensor([[0.9, 0.8, 0.2, 0.1],   # 2
                             [0.4, 0.3, 0.2, 0.1],   # 0
                             [0.9, 0.9, 0.9, 0.9],   # 4
                             [0.9, 0.5, 0.4, 0.1],   # 1: exactly 0.5 is not above
                             [0.9, 0.2, 0.7, 0.1]])  # 2: every sigmoid counts, not only the leading run
    assert head.decode(sigmoids).tolist() == [2, 0, 4, 1, 2]
    # the loss is zero-ish exactly where the logits agree with the cumulative targets
    grades = torch.tensor([0, 3])
    good = (ordinal_targets(grades) * 2 - 1) * 20
    assert head.loss(good, grades) < 1e-8 < head.loss(-good, grades)
    assert head.decode(head.activate(good)).tolist() == [0, 3]


def test_grade_probabilities_are_valid_and_cumulative_outputs_decode_back():
    logits = torch.randn(64, 5, generator=torch.Generator().manual_seed(0)) * 3
    for head in (ClassificationHead(), OrdinalHead()):
        activated = head.activate(logits[:, :head.num_outputs])
        probs = head.probs(activated)
        assert probs.shape == (64, 5) and (probs >= 0).all()
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(64))
        cumulative = head.cumulative(activated)
        assert cumulative.shape == (64, 5) and (cumulative[:, 0] == 1).all()  # P(grade >= 0) = 1: no -1 rows
    ordinal = OrdinalHead()
    monotone = torch.tensor([[0.9, 0.7, 0.4, 0.1]])  # already decreasing: plain differences
    torch.testing.assert_close(ordinal.probs(monotone), torch.tensor([[0.1, 0.2, 0.3, 0.3, 0.1]]))
    bumpy = torch.tensor([[0.9, 0.2, 0.7, 0.1]])  # running minimum: [0.9, 0.2, 0.2, 0.1]
    torch.testing.assert_close(ordinal.probs(bumpy), torch.tensor([[0.1, 0.7, 0.0, 0.1, 0.1]]))
    # the paper's decoding of each head's cumulative layout: ordinal and regression give our grade exactly,
    # classification the median of the softmax
    sig = ordinal.activate(logits[:, :4])
    assert np.array_equal(kaggle_decode(ordinal.cumulative(sig).numpy()), ordinal.decode(sig).numpy())
    regression = RegressionHead()
    score = logits[:, 0]
    assert np.array_equal(kaggle_decode(regression.cumulative(score).numpy()), regression.decode(score).numpy())
    soft = ClassificationHead().activate(logits)
    median = (soft.cumsum(dim=1) >= 0.5).float().argmax(dim=1)
    assert np.array_equal(kaggle_decode(ClassificationHead().cumulative(soft).numpy()), median.numpy())


def test_classification_head_is_the_original_cross_entropy_argmax():
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    grades = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    head = ClassificationHead()
    assert torch.equal(head.loss(logits, grades), torch.nn.functional.cross_entropy(logits, grades))
    assert torch.equal(head.decode(head.activate(logits)), logits.argmax(dim=1))
    assert torch.equal(head.probs(head.activate(logits)), logits.softmax(dim=1))


def test_regression_cut_counts_thresholds_strictly_below():
    scores = torch.tensor([-1.0, 0.5, 0.51, 1.5, 2.0, 3.49, 3.5, 9.0])
    assert cut(scores, torch.tensor(DEFAULT_THRESHOLDS)).tolist() == [0, 0, 1, 1, 2, 3, 3, 4]
    assert np.array_equal(np.searchsorted(DEFAULT_THRESHOLDS, scores.numpy(), side="left"),
                          cut(scores, torch.tensor(DEFAULT_THRESHOLDS)).numpy())  # tuning decodes the same way


def test_grad_cam_evidence_per_head():
    outputs = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert ClassificationHead().evidence(outputs, torch.tensor([3])).tolist() == [4.0]
    ordinal = OrdinalHead()
    assert [ordinal.evidence(outputs[:, :4], torch.tensor([g])).item() for g in range(5)] == [-1, 1, 2, 3, 4]
    regression = RegressionHead()
    assert [regression.evidence(outputs[:, :1], torch.tensor([g])).item() for g in (0, 1, 4)] == [-1, 1, 1]


def test_unweighted_loss_is_torchs_own_reduction():
    """The default (no grade weights) keeps torch's reduced losses bit for bit: published runs do not move."""
    generator = torch.Generator().manual_seed(3)
    outputs, grades = torch.randn(17, 5, generator=generator), torch.randint(0, 5, (17,), generator=generator)
    F = torch.nn.functional
    assert torch.equal(OrdinalHead().loss(outputs[:, :4], grades),
                       F.binary_cross_entropy_with_logits(outputs[:, :4], ordinal_targets(grades)))
    assert torch.equal(RegressionHead().loss(outputs[:, :1], grades), F.mse_loss(outputs[:, 0], grades.float()))


def test_grade_weights_are_sklearns_balanced_weights_from_the_training_counts():
    from sklearn.utils.class_weight import compute_class_weight

    grades = np.repeat(np.arange(5), [73, 6, 16, 3, 2])
    counts = np.bincount(grades, minlength=5).tolist()
    balanced = grade_weights_for("balanced", counts)
    np.testing.assert_allclose(balanced.numpy(), compute_class_weight("balanced", classes=np.arange(5), y=grades),
                               rtol=1e-6)
    np.testing.assert_allclose(grade_weights_for("sqrt", counts).numpy(), np.sqrt(balanced.numpy()), rtol=1e-6)
    assert grade_weights_for("none", counts) is None
    # a grade the split lacks (grade 4 at a small fraction) weighs 0; the others as sklearn on what is present
    lacking = grade_weights_for("balanced", [10, 5, 5, 0, 0]).numpy()
    np.testing.assert_allclose(lacking[:3], compute_class_weight("balanced", classes=np.arange(3),
                                                                 y=np.repeat(np.arange(3), [10, 5, 5])), rtol=1e-6)
    assert lacking[3:].tolist() == [0.0, 0.0]
    with pytest.raises(HeadError, match=r"model\.classifier\.grade_weights='inverse' is not a weighting; allowed: "
                                        r"none, balanced, sqrt"):
        grade_weights_for("inverse", counts)


@pytest.mark.parametrize("head", [ClassificationHead(), OrdinalHead(), RegressionHead()], ids=lambda h: h.name)
def test_balanced_loss_gives_every_grade_the_same_total_weight(head):
    """With balanced weights the batch loss is the mean over grades of each grade's mean loss: a majority
    grade no longer outvotes the rest (what the weighting is for); uniform weights change nothing."""
    grades = torch.tensor([0] * 12 + [1, 2, 2, 4])
    outputs = torch.randn(len(grades), head.num_outputs, generator=torch.Generator().manual_seed(4))
    per_image = head.losses(outputs, grades, reduction="none")
    assert per_image.shape == (len(grades),)
    weights = grade_weights_for("balanced", np.bincount(grades.numpy(), minlength=5).tolist())
    per_grade = torch.stack([per_image[grades == g].mean() for g in grades.unique()])
    torch.testing.assert_close(head.loss(outputs, grades, weights), per_grade.mean())
    torch.testing.assert_close(head.loss(outputs, grades, torch.full((5,), 2.5)), head.loss(outputs, grades))
    assert not torch.allclose(head.loss(outputs, grades, weights), head.loss(outputs, grades))


def test_classifier_trains_on_the_weighted_loss_and_validates_on_the_plain_one():
    counts = [12, 1, 2, 0, 1]
    model = DRClassifier(Backbone("resnet10t"), grade_weights="balanced", grade_counts=counts)
    torch.testing.assert_close(model.loss_weights, grade_weights_for("balanced", counts))
    assert "loss_weights" not in model.state_dict()  # checkpoints stay loadable either way
    assert DRClassifier(Backbone("resnet10t")).loss_weights is None
    images, grades = torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 2, 4])
    model.eval()
    logged = {}
    model.log = lambda name, value, **kwargs: logged.setdefault(name, value)
    loss = model.training_step((images, grades), 0)
    outputs = model(images)
    torch.testing.assert_close(loss, model.grading.loss(outputs, grades, model.loss_weights))
    model._evaluate((images, grades), "val")
    torch.testing.assert_close(logged["val/loss"], model.grading.loss(outputs, grades))


def test_unknown_head_is_one_clear_error():
    assert set(HEADS) == {"classification", "ordinal", "regression"}
    with pytest.raises(HeadError, match=r"model\.head='softmax' is not a head; allowed: classification, ordinal, "
                                        r"regression"):
        build_head("softmax")
    with pytest.raises(HeadError, match="model.head"):
        DRClassifier(Backbone("resnet10t"), head="Ordinal")


# ----------------------------------------------------------------------------- threshold tuning

def hand_made_regression() -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank the grades perfectly but are squeezed to 0.6 x grade: rounding mislabels most."""
    grades = np.repeat(np.arange(5), 6)
    return 0.6 * grades + np.tile([-0.1, -0.06, -0.02, 0.02, 0.06, 0.1], 5), grades


def test_tuning_finds_thresholds_with_a_higher_qwk_than_rounding():
    scores, grades = hand_made_regression()
    default = quadratic_weighted_kappa(grades, np.searchsorted(DEFAULT_THRESHOLDS, scores))
    tuned = tune_thresholds(scores, grades)
    assert np.all(np.diff(tuned) > 0)
    assert default == pytest.approx(0.6263, abs=1e-4)
    assert quadratic_weighted_kappa(grades, np.searchsorted(tuned, scores)) == 1.0
    assert np.array_equal(tune_thresholds(scores[::-1], grades[::-1]), tuned)  # order-free, deterministic


def test_tuning_keeps_the_defaults_when_they_are_already_best_or_nothing_is_known():
    grades = np.repeat(np.arange(5), 3)
    assert tune_thresholds(grades + 0.1, grades).tolist() == list(DEFAULT_THRESHOLDS)
    assert tune_thresholds(np.array([]), np.array([])).tolist() == list(DEFAULT_THRESHOLDS)
    assert tune_thresholds(np.full(4, 2.0), np.full(4, 2)).tolist() == list(DEFAULT_THRESHOLDS)  # kappa undefined


def test_tuned_result_never_scores_below_the_start_on_noisy_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        grades = rng.integers(0, 5, 300)
        scores = grades * rng.uniform(0.4, 1.2) + rng.normal(0, 0.8, 300)
        tuned = tune_thresholds(scores, grades)
        assert np.all(np.diff(tuned) > 0)
        assert quadratic_weighted_kappa(grades, np.searchsorted(tuned, scores)) >= \
            quadratic_weighted_kappa(grades, np.searchsorted(DEFAULT_THRESHOLDS, scores))


class CollectTestOutputs(L.Callback):
    """``test_step``'s returned dicts."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, torch.Tensor]] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.outputs.append(outputs)


def test_thresholds_come_from_validation_predictions_only(tmp_path):
    """Checkpoint buffer == tuning on the best epoch's validation predictions; test labels change nothing."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(48, 3, 32, 32, generator=generator)
    grades = torch.randint(0, 5, (48,), generator=generator)
    train_set, val_set = TensorDataset(images[:24], grades[:24]), TensorDataset(images[24:40], grades[24:40])
    L.seed_everything(0)
    model = DRClassifier(Backbone("resnet10t"), optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
                         head="regression")
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/qwk", mode="max")
    trainer = L.Trainer(max_epochs=3, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(train_set, batch_size=8), DataLoader(val_set, batch_size=8))
    assert {"val/qwk", "val/qwk_rounded", "val/qwk_kaggle"} <= trainer.callback_metrics.keys()

    stored = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    best = DRClassifier.load_from_checkpoint(checkpoint.best_model_path, backbone=Backbone("resnet10t"),
                                             weights_only=True).eval()
    with torch.no_grad():
        scores = torch.cat([best.grading.activate(best(x)) for x, _ in DataLoader(val_set, batch_size=8)])
    expected = tune_thresholds(scores.numpy(), grades[24:40].numpy())
    assert not np.allclose(expected, DEFAULT_THRESHOLDS)  # tuning did move them: the check below means something
    np.testing.assert_array_equal(stored["grading.thresholds"].numpy(), expected.astype(np.float32))

    results = []
    for labels in (grades[40:], (grades[40:] + 2) % 5):  # two different truths for the same test images
        probe = CollectTestOutputs()
        tester = L.Trainer(callbacks=[probe], logger=False, enable_progress_bar=False, enable_model_summary=False)
        tester.test(model, DataLoader(TensorDataset(images[40:], labels), batch_size=4),
                    ckpt_path=checkpoint.best_model_path, verbose=False)
        results.append((model.grading.thresholds.clone(), probe.outputs))
    (thresholds_a, outputs_a), (thresholds_b, outputs_b) = results
    assert torch.equal(thresholds_a, thresholds_b) and torch.equal(thresholds_a, stored["grading.thresholds"])
    for a, b in zip(outputs_a, outputs_b, strict=True):
        assert set(a) == {"preds", "referable", "score"} and a["preds"].dtype == torch.long and a["score"].shape == (4,)
        assert torch.equal(a["preds"], b["preds"]) and torch.equal(a["score"], b["score"])
        assert torch.equal(a["preds"], cut(a["score"], thresholds_a))


# ----------------------------------------------------------------------------- qw_kappa_kaggle

def test_numpy_qwk_matches_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y, p = rng.integers(0, 5, 50), rng.integers(0, 5, 50)
        assert quadratic_weighted_kappa(y, p) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    assert np.isnan(quadratic_weighted_kappa(np.full(3, 2), np.full(3, 2)))


def test_kaggle_layout_and_decoding():
    assert kaggle_cumulative(np.array([0, 2, 4])).tolist() == [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert kaggle_decode(kaggle_cumulative(np.arange(5))).tolist() == LABELS
    outputs = np.array([[0.9, 0.8, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1, 0.0], [0.9, 0.1, 0.7, 0.1, 0.1],
                        [0.5, 0.5, 0.5, 0.5, 0.5]])
    assert kaggle_decode(outputs).tolist() == [1, -1, 1, -1]  # all <= 0.5 -> -1; non-leading ones count


def test_qw_kappa_kaggle_silently_drops_rows_decoded_to_minus_one():
    y = kaggle_cumulative(np.array([0, 1, 2, 3, 4, 2, 4]))
    y_pred = np.array([[0.9, 0.1, 0.0, 0.0, 0.0],    # 0
                       [0.9, 0.8, 0.2, 0.1, 0.0],    # 1
                       [0.4, 0.4, 0.3, 0.2, 0.1],    # -1: dropped (a grade-2 image)
                       [0.9, 0.9, 0.9, 0.6, 0.1],    # 3
                       [0.9, 0.9, 0.9, 0.9, 0.7],    # 4
                       [0.9, 0.7, 0.1, 0.1, 0.1],    # 1
                       [0.2, 0.1, 0.1, 0.1, 0.1]])   # -1: dropped (a grade-4 image)
    grades, preds = kaggle_decode(y), kaggle_decode(y_pred)
    assert preds.tolist() == [0, 1, -1, 3, 4, 1, -1]
    value = qw_kappa_kaggle(y, y_pred)
    assert value == cohen_kappa_score(grades, preds, labels=LABELS, weights="quadratic")  # the paper's call
    kept = preds >= 0
    assert value == pytest.approx(cohen_kappa_score(grades[kept], preds[kept], weights="quadratic"))  # == dropped
    # counting those two images (e.g. read as grade 0, "no output fired") instead costs a lot of kappa
    counted = quadratic_weighted_kappa(grades, np.maximum(preds, 0))
    assert value == pytest.approx(0.9524, abs=1e-4) and counted == pytest.approx(0.4143, abs=1e-4)


def test_kaggle_metric_accumulates_batches_like_one_call():
    rng = np.random.default_rng(2)
    grades = rng.integers(0, 5, 40)
    cumulative = np.sort(rng.uniform(size=(40, 5)), axis=1)[:, ::-1].copy()
    cumulative[:, 0] = 1.0
    metric = KaggleKappa()
    for part in np.array_split(np.arange(40), 3):
        metric.update(torch.from_numpy(cumulative[part]), torch.from_numpy(grades[part]))
    expected = qw_kappa_kaggle(kaggle_cumulative(grades), cumulative)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    # what a DDP sync leaves: each list state concatenated over ranks into one tensor
    synced = KaggleKappa()
    synced.cumulative, synced.grades = torch.from_numpy(cumulative).float(), torch.from_numpy(grades)
    assert synced.compute().item() == pytest.approx(expected, abs=1e-6)
    assert np.isnan(KaggleKappa().compute().item())


# ----------------------------------------------------------------------------- referable DR (grade >= 2)

def test_each_head_ranks_referable_images_by_its_own_reading_of_grade_2_or_worse():
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0, 3.0]])
    classification = ClassificationHead()
    probs = classification.activate(logits)
    assert torch.allclose(classification.referable(probs), probs[:, 2:].sum(dim=1))
    ordinal = OrdinalHead()
    sigmoids = ordinal.activate(torch.tensor([[2.0, -1.0, -3.0, -4.0], [3.0, 1.0, -2.0, -3.0]]))
    assert torch.equal(ordinal.referable(sigmoids), sigmoids[:, 1])  # P(grade >= 2)
    regression = RegressionHead()
    score = regression.activate(torch.tensor([[0.2], [1.7], [3.9]]))
    assert torch.equal(regression.referable(score), score)  # the score, not the cut grade: no ties
    for head, activated in ((classification, probs), (regression, score)):
        assert head.referable(activated).argsort().tolist() == [0, 1, 2], head.name


def test_confusion_summary_matches_sklearn_and_is_nan_without_a_denominator():
    generator = np.random.default_rng(5)
    grades = np.repeat(np.arange(5), [30, 5, 10, 0, 4])  # no grade 3 in this stage
    preds = np.clip(grades + generator.integers(-1, 2, len(grades)), 0, 2)  # grades 3 and 4 never predicted
    summary = confusion_summary(confusion_matrix(grades, preds, labels=LABELS))
    recall = recall_score(grades, preds, labels=LABELS, average=None, zero_division=np.nan)
    precision = precision_score(grades, preds, labels=LABELS, average=None, zero_division=np.nan)
    np.testing.assert_allclose([summary[f"recall_grade{k}"] for k in LABELS], recall)
    np.testing.assert_allclose([summary[f"precision_grade{k}"] for k in LABELS], precision)
    assert np.isnan(summary["recall_grade3"]) and np.isnan(summary["precision_grade4"])
    assert summary["sensitivity_referable"] == pytest.approx(recall_score(grades >= 2, preds >= 2))
    assert summary["specificity_referable"] == pytest.approx(recall_score(grades < 2, preds < 2))
    assert np.isnan(confusion_summary(np.zeros((5, 5)))["sensitivity_referable"])


def test_referable_auroc_matches_sklearn_across_batches_and_is_nan_with_one_side_only():
    generator = torch.Generator().manual_seed(0)
    grades = torch.randint(0, 5, (40,), generator=generator)
    score = grades.float() + torch.randn(40, generator=generator) * 1.5
    metric = ReferableAUROC()
    for chunk in range(0, 40, 16):  # batches, as a validation epoch feeds it
        metric.update(score[chunk:chunk + 16], grades[chunk:chunk + 16])
    expected = roc_auc_score((grades >= 2).numpy(), score.numpy())
    assert 0.5 < expected < 1.0
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    for only in (torch.tensor([0, 1, 0, 1]), torch.tensor([2, 3, 4, 2])):  # no referable / all referable
        one_sided = ReferableAUROC()
        one_sided.update(torch.rand(4), only)
        assert np.isnan(one_sided.compute().item())  # torchmetrics alone says 0.0
    assert np.isnan(ReferableAUROC().compute().item())


# ----------------------------------------------------------------------------- end to end, per head

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[dict[str, TinyRun]]:
    with one_thread():
        yield {head: tiny_run(tmp_path_factory, head) for head in HEADS}


@pytest.mark.parametrize("head", list(HEADS))
def test_tiny_train_per_head(runs, head):
    run = runs[head]
    metrics = run.metrics
    for key in ("val/qwk", "val/qwk_kaggle", "val/qwk_best", "test/qwk", "test/qwk_kaggle", "test/acc"):
        assert key in metrics and (np.isnan(metrics[key]) or -1 <= metrics[key] <= 1), key
    assert ("val/qwk_rounded" in metrics) is (head == "regression")
    payload = torch.load(run.ckpt, map_location="cpu", weights_only=True)
    assert payload["hyper_parameters"]["head"] == head
    assert payload["state_dict"]["head.1.weight"].shape[0] == HEADS[head].num_outputs
    if head != "classification":  # the paper's decoding of our cumulative layout is our own decoding
        assert metrics["test/qwk_kaggle"] == pytest.approx(metrics["test/qwk"], abs=1e-5, nan_ok=True)
    if head == "regression":
        thresholds = payload["state_dict"]["grading.thresholds"]
        assert torch.equal(run.model.grading.thresholds, thresholds) and (thresholds.diff() > 0).all()

    # test_step's outputs, as TestPredictionWriter saved them: they reproduce test/qwk
    table = pd.read_csv(run.ckpt.parent.parent / TEST_PREDICTIONS)
    assert ({f"p{k}" for k in range(5)} <= set(table.columns)) is (head != "regression")
    assert ("score" in table.columns) is (head == "regression")
    qwk = cohen_kappa_score(table.grade, table.pred, labels=LABELS, weights="quadratic")
    assert metrics["test/qwk"] == pytest.approx(qwk, abs=1e-5, nan_ok=True)
    if head == "regression":
        assert table.pred.tolist() == cut(torch.tensor(table.score.to_numpy()), thresholds).tolist()
    else:
        np.testing.assert_allclose(table[[f"p{k}" for k in range(5)]].sum(axis=1), 1.0, atol=1e-5)
    # the screening metric, from the same saved predictions
    referable = table.grade >= 2
    assert "test/auroc_referable" in metrics and "val/auroc_referable" in metrics
    if referable.nunique() == 2:
        ranking = table.score if head == "regression" else table[["p2", "p3", "p4"]].sum(axis=1)
        assert metrics["test/auroc_referable"] == pytest.approx(roc_auc_score(referable, ranking), abs=1e-4)
    else:
        assert np.isnan(metrics["test/auroc_referable"])
    # per-grade and referable figures: the confusion matrix of the same predictions, and what is read off it
    assert metrics["test/confusion"] == confusion_matrix(table.grade, table.pred, labels=LABELS).tolist()
    for grade in LABELS:
        expected = (table[table.grade == grade].pred == grade).mean() if (table.grade == grade).any() else np.nan
        assert metrics[f"test/recall_grade{grade}"] == pytest.approx(expected, abs=1e-6, nan_ok=True)
    decided = table.pred >= 2
    assert metrics["test/sensitivity_referable"] == pytest.approx(decided[referable].mean(), abs=1e-6, nan_ok=True)
    assert metrics["test/specificity_referable"] == pytest.approx((~decided[~referable]).mean(), abs=1e-6,
                                                                  nan_ok=True)
    # val/* describe the tested checkpoint (one more pass over it), which reproduces the score that chose it;
    # that pass is a record, not a point of the training curve
    assert metrics["val/qwk"] == pytest.approx(metrics["val/qwk_best"], abs=1e-6, nan_ok=True)
    assert np.asarray(metrics["val/confusion"]).sum() == metrics["num_val"]
    curve = pd.read_csv(run.ckpt.parent.parent / "finetune" / "metrics.csv")
    validations = curve["val/qwk"].notna().sum()
    assert validations == len(curve["step"][curve["val/qwk"].notna()].unique())
    assert {f"val/recall_grade{g}" for g in LABELS} <= set(curve.columns)  # per-grade curves while training


def test_a_collapsed_validation_is_said_once_in_words_not_as_a_warning_per_epoch(caplog):
    """On real photographs a grader sitting on grade 0 made scikit-learn warn at every validation (47 times in
    one run); now the kappa is NaN quietly and the run says it once."""
    import warnings

    y = kaggle_cumulative(np.zeros(6, dtype=int))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert np.isnan(qw_kappa_kaggle(y, y))
    model = DRClassifier(Backbone("resnet10t"))
    model._trainer = type("T", (), {"sanity_checking": False, "global_step": 50})()
    model.log = lambda *args, **kwargs: None
    grades = torch.tensor([0, 1, 2, 0])
    collapsed = torch.zeros(4, 5)
    collapsed[:, 0] = 1.0
    with caplog.at_level("INFO", logger="ssl_dr.models.classifier"), warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            model._score("val", collapsed, grades)
            model._log_confusion("val")
    said = [r.getMessage() for r in caplog.records if "every image graded 0" in r.getMessage()]
    assert len(said) == 1 and "said once" in said[0]
    assert model.confusion_matrices["val"] == [[2, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0] * 5, [0] * 5]
