"""A checkpoint's inference spec (backbone, size, preprocessing, mean/std: never re-typed), the screening settings
fitted on its validation slice, and the grader it holds, checked before anything heavy is imported."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssl_dr.data.fundus_preprocess import MASKS

if TYPE_CHECKING:

    from ssl_dr.models.classifier import DRClassifier

from ssl_dr.inference.errors import InferenceError, first_line
from ssl_dr.run_contract import CHECKPOINT_SCREENING


@dataclass(frozen=True)
class InferenceSpec:
    """The input pipeline a checkpoint was trained with (its ``hyper_parameters.inference``)."""

    backbone: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ben_graham: bool
    mask: str = "none"  # data.preprocess.mask; checkpoints from before the mask existed trained unmasked
    # timm.create_model arguments beyond the name (a ViT's img_size, global_pool); older checkpoints: none
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hparams(cls, inference: dict[str, Any]) -> InferenceSpec:
        mask = str(inference["preprocess"].get("mask", "none"))
        if mask not in MASKS:
            raise ValueError(f"preprocess.mask={mask!r} is not one of {MASKS}")
        return cls(backbone=str(inference["backbone"]), image_size=int(inference["image_size"]),
                   mean=tuple(float(m) for m in inference["mean"]), std=tuple(float(s) for s in inference["std"]),
                   ben_graham=bool(inference["preprocess"]["ben_graham"]), mask=mask,
                   model_kwargs=dict(inference.get("model_kwargs") or {}))


@dataclass(frozen=True)
class Screening:
    """What a fine-tune fitted on its validation slice and stored in ``best.ckpt`` (``ssl_dr.training.screening``):
    the temperature of the grade probabilities (None: not fitted) and the referable-DR operating point, "refer when
    the head's referable score >= ``referable_threshold``" (NaN: none, as without a target or on a one-sided
    validation slice), chosen to reach ``referable_target`` (``{"sensitivity": 0.9}``, or None)."""

    temperature: float | None
    referable_threshold: float
    referable_target: dict[str, float] | None

    @classmethod
    def from_payload(cls, stored: dict[str, Any]) -> Screening:
        temperature, target = stored["temperature"], stored["referable_target"]
        return cls(temperature=None if temperature is None else float(temperature),
                   referable_threshold=float(stored["referable_threshold"]),
                   referable_target=None if target is None else {str(k): float(v) for k, v in dict(target).items()})

    @property
    def has_threshold(self) -> bool:
        return math.isfinite(self.referable_threshold)


def read_spec(ckpt: Path) -> InferenceSpec:
    """Check that ``ckpt`` is a DRClassifier checkpoint and return its input pipeline (torch only, cheap)."""
    return read_checkpoint(ckpt)[0]


def read_checkpoint(ckpt: Path) -> tuple[InferenceSpec, Screening | None]:
    """``read_spec``'s checks, then the input pipeline and the stored screening settings (None in checkpoints
    written before they were stored), from one memory-mapped read: the network is not built."""
    if not ckpt.is_file():
        raise InferenceError(f"checkpoint {ckpt} not found (ckpt= takes a run's checkpoints/best.ckpt)")
    try:
        payload = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for foreign or damaged files
        raise InferenceError(f"{ckpt} is not a readable PyTorch checkpoint ({type(err).__name__}: "
                             f"{first_line(err)})") from None
    hparams = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    state = payload.get("state_dict", {}) if isinstance(payload, dict) else {}
    if not isinstance(hparams, dict) or "head.1.weight" not in state:
        raise InferenceError(f"{ckpt} is not a DRClassifier checkpoint (expected the grader's "
                             "checkpoints/best.ckpt written by python -m ssl_dr.train)")
    if not isinstance(hparams.get("inference"), dict):
        raise InferenceError(f"{ckpt} is a DRClassifier checkpoint without hyper_parameters.inference (written "
                             "before checkpoints carried their input pipeline): retrain it with this version")
    try:
        spec = InferenceSpec.from_hparams(hparams["inference"])
    except (KeyError, TypeError, ValueError) as err:
        raise InferenceError(f"{ckpt}: incomplete hyper_parameters.inference ({err!r})") from None
    if payload.get(CHECKPOINT_SCREENING) is None:
        return spec, None
    try:
        return spec, Screening.from_payload(payload[CHECKPOINT_SCREENING])
    except (KeyError, TypeError, ValueError) as err:
        raise InferenceError(f"{ckpt}: unreadable {CHECKPOINT_SCREENING!r} entry ({err!r}); re-train to rewrite "
                             "it") from None


def load_classifier(ckpt: Path, spec: InferenceSpec) -> DRClassifier:
    """The checkpoint's DRClassifier on the CPU, in eval mode (weights loaded strictly)."""
    from ssl_dr.models.backbone import Backbone
    from ssl_dr.models.classifier import DRClassifier

    try:
        backbone = Backbone(spec.backbone, model_kwargs=spec.model_kwargs)
    except RuntimeError as err:  # timm: unknown model name
        raise InferenceError(f"{ckpt}: backbone {spec.backbone!r} cannot be built ({first_line(err)})") from None
    try:
        model = DRClassifier.load_from_checkpoint(ckpt, map_location="cpu", backbone=backbone, weights_only=True)
    except (RuntimeError, KeyError, TypeError) as err:
        raise InferenceError(f"{ckpt} does not fit a {spec.backbone} DRClassifier ({first_line(err)})") from None
    return model.eval()


def resolve_device(name: str) -> torch.device:
    """``auto``: the first GPU when CUDA sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InferenceError(f"device={name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device={name} but no CUDA GPU is visible (use device=auto or device=cpu)")
    return device


# ----------------------------------------------------------------------------- images
