"""The three ways to read a grade out of the network (``model.head``): one class per head.

A head owns what sits after the linear layer: its number of outputs, the training loss, and how outputs become a
grade. Everything downstream decodes the head's activation (``activate``: softmax probabilities, threshold
sigmoids or the regression score), the quantity test-time augmentation averages, so one pass and a TTA average
decode alike. ``classification``: 5 logits, cross-entropy, argmax (ignores the grades' order). ``ordinal``: 4
logits of "grade >= k", binary cross-entropy on cumulative targets. ``regression``: 1 score (MSE), cut at 4
thresholds tuned on validation (``tune_thresholds``). Each head also gives P(grade >= k), k = 0..4, for
``metrics.KaggleKappa``. Tables and the reasons: docs/arms.md, "Grade heads".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_dr.data.records import NUM_GRADES
from ssl_dr.errors import ConfigError
from ssl_dr.models.metrics import quadratic_weighted_kappa

DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
"""Regression cut points before tuning: plain rounding of the score to the nearest grade."""
MAX_CANDIDATES = 256
"""Cut points tried per threshold and round of ``tune_thresholds`` (evenly thinned beyond that)."""
MAX_ROUNDS = 20
"""Coordinate-search sweeps over the 4 thresholds; it stops earlier as soon as a sweep changes nothing."""


class GradeHead(nn.Module, ABC):
    """What a head must say. ``outputs`` are the linear layer's ``(B, num_outputs)`` values; ``activated``
    is ``activate(outputs)``, the quantity TTA averages."""

    name: ClassVar[str]
    num_outputs: ClassVar[int]
    activation: ClassVar[str]
    """What ``activate`` returns, in words (for the export's JSON)."""

    def loss(self, outputs: torch.Tensor, grades: torch.Tensor, grade_weights: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Training loss of the raw ``outputs`` against the true ``grades``: the mean over the batch, or with
        ``grade_weights`` (one weight per grade, ``grade_weights_for``) the mean weighted by each image's
        grade, normalised by the batch's total weight (as torch's weighted cross-entropy)."""
        if grade_weights is None:  # torch's own reduction: the default runs keep their exact floats
            return self.losses(outputs, grades, reduction="mean")
        per_image = self.losses(outputs, grades, reduction="none")
        weights = grade_weights.to(per_image)[grades]
        return (weights * per_image).sum() / weights.sum()

    @abstractmethod
    def losses(self, outputs: torch.Tensor, grades: torch.Tensor, reduction: str) -> torch.Tensor:
        """The loss reduced to its batch mean (``reduction="mean"``) or one value per image (``"none"``)."""

    @abstractmethod
    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> the quantity TTA averages and ``decode`` reads (see ``activation``)."""

    @abstractmethod
    def decode(self, activated: torch.Tensor) -> torch.Tensor:
        """``(B,)`` long grades 0..4."""

    def probs(self, activated: torch.Tensor) -> torch.Tensor | None:
        """``(B, 5)`` per-grade probabilities, or None where the head has none (regression)."""
        return None

    def score(self, activated: torch.Tensor) -> torch.Tensor | None:
        """``(B,)`` continuous grade, or None where the head has none."""
        return None

    @abstractmethod
    def cumulative(self, activated: torch.Tensor) -> torch.Tensor:
        """``(B, 5)`` P(grade >= k), k = 0..4, in the paper's ``qw_kappa_kaggle`` layout (column 0 is 1)."""

    @abstractmethod
    def referable(self, activated: torch.Tensor) -> torch.Tensor:
        """``(B,)`` a score that ranks images by how likely they are referable (grade >= 2, the screening
        decision): what ``{val,test}/auroc_referable`` reads. Only its order matters."""

    @abstractmethod
    def evidence(self, outputs: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the scalar whose gradient Grad-CAM follows to show the evidence for ``grades``."""

    @abstractmethod
    def decoding(self) -> dict[str, Any]:
        """How to read the exported model's raw outputs (for the export's JSON): ``meaning``, ``grade``
        (the decoding rule), ``probabilities`` (how to get them, or None)."""


class ClassificationHead(GradeHead):
    """5 logits, cross-entropy, grade = argmax of the softmax (the original DRClassifier head)."""

    name = "classification"
    num_outputs = NUM_GRADES
    activation = "softmax over the 5 logits = grade probabilities"

    def losses(self, outputs: torch.Tensor, grades: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.cross_entropy(outputs, grades, reduction=reduction)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=1)

    def decode(self, activated: torch.Tensor) -> torch.Tensor:
        return activated.argmax(dim=1)

    def probs(self, activated: torch.Tensor) -> torch.Tensor:
        return activated

    def cumulative(self, activated: torch.Tensor) -> torch.Tensor:
        """P(grade >= k) = sum of the softmax from k up (k = 0 set to exactly 1, not a float sum near 1); the
        paper's ``> 0.5`` decoding of it is the median grade, which can differ from our argmax."""
        above = activated.flip(dims=(1,)).cumsum(dim=1).flip(dims=(1,))
        return torch.cat([torch.ones_like(above[:, :1]), above[:, 1:]], dim=1)

    def referable(self, activated: torch.Tensor) -> torch.Tensor:
        """P(grade >= 2): the softmax mass of grades 2..4."""
        return activated[:, 2:].sum(dim=1)

    def evidence(self, outputs: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        """The grade's logit (standard Grad-CAM)."""
        return outputs.gather(1, grades[:, None])[:, 0]

    def decoding(self) -> dict[str, Any]:
        return {"meaning": "logits of grades 0..4", "grade": "argmax(outputs)",
                "probabilities": "softmax(outputs)"}


def ordinal_targets(grades: torch.Tensor) -> torch.Tensor:
    """Grade k -> k leading ones over the 4 thresholds ``grade >= 1 .. grade >= 4`` (2 -> [1, 1, 0, 0])."""
    return (grades[:, None] > torch.arange(NUM_GRADES - 1, device=grades.device)).float()


class OrdinalHead(GradeHead):
    """4 logits, output j the logit of P(grade >= j + 1); binary cross-entropy with logits on
    ``ordinal_targets``.

    Decoding rule: grade = the number of threshold sigmoids strictly above 0.5 (all of them, not only the
    leading run, as the paper's ``(outputs > 0.5).sum(1)`` does). Grade probabilities come from the
    cumulative ones: with c_0 = 1, c_k = min(sigmoid_1..sigmoid_k) (k = 1..4) and c_5 = 0,
    P(grade = k) = c_k - c_{k+1}. The running minimum makes the cumulative curve non-increasing, so every
    difference is >= 0 and they sum to exactly 1 with no renormalisation; where the sigmoids already
    decrease (the usual case once trained) it changes nothing. Note that the decoded grade is the grade
    where the cumulative curve crosses 0.5 (a median), not necessarily the most probable grade.
    """

    name = "ordinal"
    num_outputs = NUM_GRADES - 1
    activation = "sigmoid of the 4 logits = P(grade >= k), k = 1..4"

    def losses(self, outputs: torch.Tensor, grades: torch.Tensor, reduction: str) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(outputs.float(), ordinal_targets(grades), reduction=reduction)
        return loss if reduction == "mean" else loss.mean(dim=1)  # an image's loss: the mean of its 4 thresholds

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()

    def decode(self, activated: torch.Tensor) -> torch.Tensor:
        return (activated > 0.5).sum(dim=1)

    def probs(self, activated: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(activated[:, :1])
        curve = torch.cat([ones, activated.cummin(dim=1).values, torch.zeros_like(ones)], dim=1)
        return curve[:, :-1] - curve[:, 1:]

    def cumulative(self, activated: torch.Tensor) -> torch.Tensor:
        """[1, sigmoid_1..sigmoid_4] as they are: the paper's decoding of it gives exactly ``decode``."""
        return torch.cat([torch.ones_like(activated[:, :1]), activated], dim=1)

    def referable(self, activated: torch.Tensor) -> torch.Tensor:
        """The threshold sigmoid of "grade >= 2"."""
        return activated[:, 1]

    def evidence(self, outputs: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        """Grade g >= 1: the logit of "grade >= g", the decision that lifts an image to g; grade 0: minus the
        logit of "grade >= 1", the evidence against any retinopathy."""
        chosen = outputs.gather(1, (grades - 1).clamp_min(0)[:, None])[:, 0]
        return torch.where(grades > 0, chosen, -chosen)

    def decoding(self) -> dict[str, Any]:
        return {"meaning": "logits of P(grade >= k) for k = 1, 2, 3, 4",
                "grade": "number of outputs with sigmoid(output) > 0.5 (i.e. output > 0)",
                "probabilities": "c = [1, cummin(sigmoid(outputs)), 0]; P(grade = k) = c[k] - c[k + 1]"}


def cut(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Grade = the number of thresholds strictly below the score (a score equal to a threshold stays below)."""
    return torch.bucketize(scores.contiguous(), thresholds.to(scores), right=False)


class RegressionHead(GradeHead):
    """1 output, the grade as a number; MSE on the grade; grade = ``cut(score, thresholds)``.

    Why MSE rather than smooth L1: QWK charges an error by the squared grade distance, and MSE charges the
    score the same way, so it is the loss whose optimum QWK agrees with; the targets are bounded (0..4), so
    the outliers smooth L1 guards against cannot occur in the labels.

    ``thresholds`` is a buffer: ``DRClassifier`` overwrites it with the cut points tuned on each validation
    epoch's predictions, so the checkpoint ModelCheckpoint keeps carries the ones tuned with its weights,
    and prediction, export and testing read them from there.
    """

    name = "regression"
    num_outputs = 1
    activation = "the output itself = continuous grade"
    thresholds: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("thresholds", torch.tensor(DEFAULT_THRESHOLDS, dtype=torch.float32))

    def losses(self, outputs: torch.Tensor, grades: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.mse_loss(outputs[:, 0].float(), grades.float(), reduction=reduction)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs[:, 0].float()

    def decode(self, activated: torch.Tensor) -> torch.Tensor:
        return cut(activated, self.thresholds)

    def score(self, activated: torch.Tensor) -> torch.Tensor:
        return activated

    def cumulative(self, activated: torch.Tensor) -> torch.Tensor:
        """The decoded grade g as g + 1 leading ones (the paper's label layout): it decodes back to g."""
        grades = self.decode(activated)
        return (torch.arange(NUM_GRADES, device=grades.device)[None, :] <= grades[:, None]).float()

    def referable(self, activated: torch.Tensor) -> torch.Tensor:
        """The continuous grade itself: a higher score ranks an image as more likely referable, whatever the
        tuned cut points (the decoded grade would tie most images and waste the ranking)."""
        return activated

    def evidence(self, outputs: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        """The score for grades >= 1 (what raised it), minus the score for grade 0 (what kept it low): one
        output has no per-grade direction, so every grade >= 1 shows the same map."""
        return torch.where(grades > 0, outputs[:, 0], -outputs[:, 0])

    def decoding(self) -> dict[str, Any]:
        thresholds = [float(t) for t in self.thresholds]
        return {"meaning": "continuous grade (one value)", "thresholds": thresholds,
                "grade": f"number of thresholds strictly below the output (thresholds {thresholds}, tuned on "
                         "the validation split)", "probabilities": None}


HEADS: dict[str, type[GradeHead]] = {h.name: h for h in (ClassificationHead, OrdinalHead, RegressionHead)}


class HeadError(ConfigError):
    """An unknown ``model.head`` (a settings error: one line, exit status 2, like other bad settings)."""


def check_head(name: str) -> str:
    """``name`` when it is a known head, else a ``HeadError`` naming ``model.head`` and the allowed values."""
    if name not in HEADS:
        raise HeadError(f"model.head={name!r} is not a head; allowed: {', '.join(HEADS)}")
    return name


def build_head(name: str) -> GradeHead:
    return HEADS[check_head(name)]()


GRADE_WEIGHTINGS = ("none", "balanced", "sqrt")
"""``model.classifier.grade_weights``: how the training loss weighs an image by its grade."""


def check_grade_weights(rule: str) -> str:
    """``rule`` when it is a known weighting, else a ``HeadError`` naming the key and the allowed values."""
    if rule not in GRADE_WEIGHTINGS:
        raise HeadError(f"model.classifier.grade_weights={rule!r} is not a weighting; allowed: "
                        f"{', '.join(GRADE_WEIGHTINGS)}")
    return rule


def grade_weights_for(rule: str, grade_counts: list[int] | None) -> torch.Tensor | None:
    """Per-grade loss weights from the training split's number of images per grade (labels the run reads
    anyway), or None for ``none``.

    ``balanced``: ``n / (grades present x count)``, scikit-learn's "balanced" class weight, so every grade
    present carries the same total weight (on eyepacs-dev about 0.27 for grade 0 and 11 for grade 4);
    ``sqrt``: its square root, a milder correction. A grade absent from the split gets weight 0 (no image
    carries it). Raises ``HeadError`` for an unknown rule.
    """
    if check_grade_weights(rule) == "none":
        return None
    if grade_counts is None or len(grade_counts) != NUM_GRADES:
        raise ValueError(f"grade_weights={rule!r} needs the training split's {NUM_GRADES} grade counts")
    counts = np.asarray(grade_counts, dtype=float)
    present = counts > 0
    weights = np.zeros(NUM_GRADES)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(np.sqrt(weights) if rule == "sqrt" else weights, dtype=torch.float32)


def tune_thresholds(scores: np.ndarray, grades: np.ndarray, initial: tuple[float, ...] = DEFAULT_THRESHOLDS
                    ) -> np.ndarray:
    """The 4 sorted cut points that maximise QWK of ``cut(scores)`` against ``grades`` (validation data).

    Deterministic coordinate search: starting from ``initial``, each threshold in turn is moved to the best
    of all cut points that change the decoding (midpoints between consecutive distinct scores lying
    strictly between its neighbours, so the thresholds stay sorted), and the sweep repeats until nothing
    improves. Why not ``scipy.optimize`` (Nelder-Mead, as Kaggle's "OptimizedRounder"): QWK of a cut is
    piecewise constant in the thresholds, so a simplex stalls on flat steps and depends on its start
    simplex; trying every step is exact per coordinate, needs no tolerance, and gives the same result on
    every DDP rank. A move is taken only when it strictly raises QWK (ties: the point nearest the current
    threshold), so the result never scores below ``initial`` and stays at it when the data say nothing;
    with fewer than two distinct grades kappa is 0 or undefined for every cut, so ``initial`` is returned.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    grades = np.asarray(grades, dtype=np.int64).ravel()
    thresholds = np.sort(np.asarray(initial, dtype=np.float64))
    if len(np.unique(grades)) < 2:
        return thresholds
    best = quadratic_weighted_kappa(grades, np.searchsorted(thresholds, scores, side="left"))
    for _ in range(MAX_ROUNDS):
        moved = False
        for i in range(len(thresholds)):
            low = thresholds[i - 1] if i > 0 else -np.inf
            high = thresholds[i + 1] if i + 1 < len(thresholds) else np.inf
            candidate, value = _best_cut(scores, grades, thresholds, i, low, high)
            if value > best:
                thresholds[i], best, moved = candidate, value, True
        if not moved:
            break
    return thresholds


def _best_cut(scores: np.ndarray, grades: np.ndarray, thresholds: np.ndarray, i: int, low: float, high: float
              ) -> tuple[float, float]:
    """Best position of ``thresholds[i]`` strictly inside ``(low, high)``, and its QWK."""
    inside = scores[(scores > low) & (scores < high)]
    ends = [low if np.isfinite(low) else (inside.min() if len(inside) else thresholds[i]) - 1.0,
            high if np.isfinite(high) else (inside.max() if len(inside) else thresholds[i]) + 1.0]
    points = np.unique(np.concatenate([inside, ends]))
    candidates = (points[:-1] + points[1:]) / 2
    if len(candidates) > MAX_CANDIDATES:
        candidates = candidates[np.linspace(0, len(candidates) - 1, MAX_CANDIDATES).round().astype(int)]
    trial = thresholds.copy()
    values = []
    for c in candidates:
        trial[i] = c
        values.append(quadratic_weighted_kappa(grades, np.searchsorted(trial, scores, side="left")))
    values_arr = np.asarray(values)
    top = np.flatnonzero(values_arr == values_arr.max())
    pick = top[np.argmin(np.abs(candidates[top] - thresholds[i]))]
    return float(candidates[pick]), float(values_arr[pick])
