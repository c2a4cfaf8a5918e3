"""Grad-CAM (Selvaraju et al., 2017): which part of the fundus pushed a grader towards a grade.

One implementation for ``python -m ssl_dr.explain`` and the fine-tune's W&B predictions table, so both show the
same maps. Hooks on the backbone's last feature map ``A`` give the gradient of the grade's evidence ``y``
(``GradeHead.evidence``, per head); each channel is weighted by its mean gradient, and ``ReLU(sum_c w_c A_c)`` is
scaled to [0, 1] and upsampled to the image. The layer (``auto``) is the last 4-D output before global pooling
(DenseNet121: ``backbone.model.features``, input / 32), or a ViT's last ``norm1`` with the patch tokens laid on
their grid. The overlay colours the field of view only, and ``coarse_map`` flags maps under ``MIN_CELLS`` a side,
which cannot point at a lesion. Details and examples: docs/inference.md, "explain: Grad-CAM".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from scipy.ndimage import binary_fill_holes
from torch import nn

from ssl_dr.data.fundus_preprocess import bright_mask
from ssl_dr.inference.errors import InferenceError

if TYPE_CHECKING:
    from ssl_dr.models.classifier import DRClassifier

MIN_SIDE = 256
"""Overlays smaller than this (a 32-64 px model) are upscaled so the written prediction stays legible."""
ALPHA = 0.45
"""Heatmap weight in the blend (the fundus keeps the rest)."""
MIN_CELLS = 4
"""Fewest feature-map cells a side for a map that can localise anything (DenseNet121: 128 px input)."""


def find_target_layer(model: nn.Module, backbone: nn.Module, image_size: int, name: str = "auto") -> str:
    """Name (in ``model.named_modules()``) of the module Grad-CAM reads.

    ``auto``: probe ``backbone.forward_features`` (timm's features-before-pooling) with hooks on every
    module, and take the last module to finish whose output is a 4-D tensor.
    """
    modules = dict(model.named_modules())
    if name != "auto":
        if name not in modules:
            raise InferenceError(f"layer={name!r} is not a module of the model (e.g. backbone.model.features)")
        return name
    from ssl_dr.models.backbone import is_vit  # here: timm loads only once a checkpoint passed its checks

    prefix = next(n for n, m in modules.items() if m is backbone)
    if is_vit(backbone):  # the last block's first norm: where patch tokens still feed the pooled output
        return f"{prefix}.blocks.{len(backbone.blocks) - 1}.norm1"
    finished: list[str] = []

    def recorder(module_name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                finished.append(module_name)
        return hook

    hooks = [m.register_forward_hook(recorder(n)) for n, m in backbone.named_modules() if n]
    try:
        with torch.no_grad():
            device = next(backbone.parameters()).device
            backbone.forward_features(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    if not finished:
        raise InferenceError(f"{type(backbone).__name__} has no 4-D feature map to explain")
    return f"{prefix}.{finished[-1]}"


@contextmanager
def _captured(layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hook storing ``layer``'s output and, through a tensor backward hook, its gradient."""
    store: dict[str, torch.Tensor] = {}

    def forward_hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        store["activation"] = output
        output.register_hook(lambda grad: store.__setitem__("gradient", grad))

    handle = layer.register_forward_hook(forward_hook)
    try:
        yield store
    finally:
        handle.remove()


def grad_cam(model: DRClassifier, layer: nn.Module, images: torch.Tensor, grades: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cams, activated, targets)``: ``(B, h, w)`` heatmaps in [0, 1] for ``targets`` (``grades`` or the
    predicted ones), and the head's activation (``model.grading.activate``: probabilities, or the score).
    ``model`` must be in eval mode, so the samples of a batch do not interact and one backward pass of the
    summed evidence gives every sample's gradient."""
    with _captured(layer) as store, torch.enable_grad():
        outputs = model(images.requires_grad_(True))
        activated = model.grading.activate(outputs.detach())
        targets = model.grading.decode(activated) if grades is None else grades.to(outputs.device)
        model.grading.evidence(outputs, targets).sum().backward()
    prefix_tokens = getattr(model.backbone.model, "num_prefix_tokens", 0)
    activation, gradient = (as_feature_map(store["activation"].detach(), prefix_tokens),
                            as_feature_map(store["gradient"], prefix_tokens))
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * activation).sum(dim=1))
    peak = cams.amax(dim=(1, 2), keepdim=True)
    cams = torch.where(peak > 0, cams / peak.clamp_min(1e-12), torch.zeros_like(cams))
    return cams, activated, targets


def as_feature_map(values: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """``(B, C, h, w)`` as is; a ViT's ``(B, prefix + h*w, C)`` tokens without the class/register tokens, laid
    out on their square patch grid as ``(B, C, h, w)``."""
    if values.ndim == 4:
        return values
    patches = values[:, prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise InferenceError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.reshape(len(values), side, side, -1).permute(0, 3, 1, 2)


def overlay(pixels: np.ndarray, cam: np.ndarray, text: str, side: int) -> np.ndarray:
    """``(side, side, 3)`` RGB: JET heatmap over the fundus's field of view (outside it the fundus as it is),
    ``text`` on a dark band at the top."""
    fundus = cv2.resize(pixels, (side, side), interpolation=cv2.INTER_NEAREST)
    fov = field_of_view(fundus)
    heat = cv2.resize(cam.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR) * fov
    colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET),
                          cv2.COLOR_BGR2RGB)
    blended = np.where(fov[..., None], cv2.addWeighted(fundus, 1 - ALPHA, colour, ALPHA, 0), fundus)
    return captioned(blended, text)


def field_of_view(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the fundus of a preprocessed image (bright pixels, dark lesions inside included); what
    ``data.preprocess.mask`` (or the padding) left black is outside."""
    return binary_fill_holes(bright_mask(pixels))


def coarse_map(cams: torch.Tensor, image_size: int) -> str | None:
    """Why ``cams`` (``(B, h, w)``) cannot localise anything (fewer than ``MIN_CELLS`` cells a side), else None."""
    height, width = cams.shape[-2:]
    if min(height, width) >= MIN_CELLS:
        return None
    needed = -(-image_size * MIN_CELLS // min(height, width))
    return f"the feature map is {height}x{width} at {image_size} px; use >= {needed} px"


def captioned(image: np.ndarray, text: str, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``image`` (square RGB uint8, changed in place and returned) with ``text`` written on a dark band at the
    top, sized to the image and shrunk to fit its width."""
    side = image.shape[1]
    scale = side / 512
    band = max(12, round(36 * scale))
    image[:band] = (image[:band] * 0.35).astype(np.uint8)
    margin = max(3, round(8 * scale))
    font = max(0.35, 0.9 * scale)
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0]
    font *= min(1.0, (side - 2 * margin) / width)  # shrink a long caption to fit
    cv2.putText(image, text, (margin, round(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, font, colour, 1, cv2.LINE_AA)
    return image


def caption(pred: int, target: int, probs: Sequence[float] | None = None, score: float | None = None,
            true: int | None = None) -> str:
    """``true 1 / pred 2 (p=0.71)`` (``true`` where the grade is known) and, when another grade is explained,
    ``| CAM 3 (p=0.12)``; a regression head shows its score instead (``pred 2 (s=1.83) | CAM 3``)."""
    text = f"pred {pred} (p={probs[pred]:.2f})" if probs is not None else f"pred {pred} (s={score:.2f})"
    if true is not None:
        text = f"true {true} / {text}"
    if target == pred:
        return text
    return f"{text} | CAM {target}" + (f" (p={probs[target]:.2f})" if probs is not None else "")
