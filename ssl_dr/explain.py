"""Grad-CAM heatmaps: which part of the fundus pushed the grader towards a grade.

``python -m ssl_dr.explain ckpt=.../best.ckpt images=<folder or CSV> out=<folder> [grade=pred|0..4] [limit=N]``

Why: a kappa says how often the grader is right, not why. A heatmap on the optic disc or on the black
border instead of on haemorrhages and exudates is a shortcut that a held-out score on the same kind of
data cannot reveal.

Grad-CAM (Selvaraju et al., 2017), implemented here with a forward hook and a tensor backward hook on
the backbone's last feature map: with activations ``A`` (``C x h x w``) and the gradient ``dy/dA`` of a
scalar ``y`` for the chosen grade, each channel's weight is its gradient averaged over the map, and the
heatmap is ``ReLU(sum_c weight_c * A_c)``, scaled to [0, 1] by its maximum and upsampled bilinearly to the
image. ``y`` depends on the checkpoint's head (``GradeHead.evidence``): classification, the grade's
logit; ordinal, the logit of "grade >= g" for g >= 1 and minus the logit of "grade >= 1" for grade 0;
regression, the score for g >= 1 and minus the score for grade 0 (one output: every g >= 1 gives the
same map, the evidence that raised the score).
The layer (``layer=auto``) is the last module whose output is 4-D while timm's ``forward_features`` runs,
i.e. the feature map just before global pooling: ``backbone.model.features`` for DenseNet121 (its last
child is ``norm5``, the final BatchNorm + ReLU). Its resolution is the input size / 32 (2 x 2 at 64 px,
7 x 7 at 224 px); ``layer=backbone.model.features.denseblock3`` gives twice as fine, less class-specific maps.

Each overlay is the preprocessed fundus (what the network sees: cropped, squared, resized, Ben Graham
when the checkpoint used it) with the JET heatmap blended over it and the prediction written on top,
upscaled to at least ``MIN_SIDE`` px so the text stays legible. ``index.csv`` lists them (with the
probabilities of the predicted and explained grades, or the score for a regression head).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ssl_dr.data.records import Record
from ssl_dr.inference import (
    InferenceError,
    InputArgs,
    arg,
    decoded_images,
    eval_transform,
    list_images,
    load_classifier,
    read_spec,
    resolve_device,
    run_cli,
    tensor_batches,
)
from ssl_dr.models.heads import GradeHead

if TYPE_CHECKING:
    from ssl_dr.models.classifier import DRClassifier

MIN_SIDE = 256
"""Overlays smaller than this (a 32-64 px model) are upscaled so the written prediction stays legible."""
ALPHA = 0.45
"""Heatmap weight in the blend (the fundus keeps the rest)."""
INDEX_NAME = "index.csv"
SKIPPED_NAME = "skipped.csv"


@dataclass(kw_only=True)
class ExplainArgs(InputArgs):
    """``python -m ssl_dr.explain`` arguments."""

    out: Path = arg(help="folder for <id_code>.png overlays and index.csv")
    grade: str = arg("pred", help="grade whose evidence is shown (pred: the predicted one)",
                     choices=("pred", "0", "1", "2", "3", "4"))
    limit: int | None = arg(None, help="explain only the first N images")
    layer: str = arg("auto", help="module whose output is explained (auto: the last 4-D feature map)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and self.limit < 1:
            raise InferenceError(f"limit={self.limit} must be at least 1")


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
    prefix = next(n for n, m in modules.items() if m is backbone)
    finished: list[str] = []

    def recorder(module_name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                finished.append(module_name)
        return hook

    hooks = [m.register_forward_hook(recorder(n)) for n, m in backbone.named_modules() if n]
    try:
        with torch.no_grad():
            backbone.forward_features(torch.zeros(1, 3, image_size, image_size))
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
    activation, gradient = store["activation"].detach(), store["gradient"]
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * activation).sum(dim=1))
    peak = cams.amax(dim=(1, 2), keepdim=True)
    cams = torch.where(peak > 0, cams / peak.clamp_min(1e-12), torch.zeros_like(cams))
    return cams, activated, targets


def overlay(pixels: np.ndarray, cam: np.ndarray, text: str, side: int) -> np.ndarray:
    """``(side, side, 3)`` RGB: JET heatmap over the fundus, ``text`` on a dark band at the top."""
    fundus = cv2.resize(pixels, (side, side), interpolation=cv2.INTER_NEAREST)
    heat = cv2.resize(cam.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET),
                          cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(fundus, 1 - ALPHA, colour, ALPHA, 0)
    scale = side / 512
    band = max(12, round(36 * scale))
    out[:band] = (out[:band] * 0.35).astype(np.uint8)
    margin = max(3, round(8 * scale))
    font = max(0.35, 0.9 * scale)
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0]
    font *= min(1.0, (side - 2 * margin) / width)  # shrink a long caption to fit
    cv2.putText(out, text, (margin, round(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def caption(pred: int, target: int, probs: Sequence[float] | None = None, score: float | None = None) -> str:
    """``pred 2 p=0.71`` and, when another grade is explained, ``| CAM 3 p=0.12``; a regression head shows
    its score instead (``pred 2 s=1.83 | CAM 3``)."""
    text = f"pred {pred} p={probs[pred]:.2f}" if probs is not None else f"pred {pred} s={score:.2f}"
    if target == pred:
        return text
    return f"{text} | CAM {target}" + (f" p={probs[target]:.2f}" if probs is not None else "")


def explain(args: ExplainArgs) -> pd.DataFrame:
    """Write one overlay PNG per readable image and ``index.csv`` into ``args.out``; return the index."""
    spec = read_spec(args.ckpt)
    records = list_images(args.images, args.image_dir)[:args.limit]
    device = resolve_device(args.device)
    model = load_classifier(args.ckpt, spec)
    layer_name = find_target_layer(model, model.backbone.model, spec.image_size, args.layer)
    layer = dict(model.named_modules())[layer_name]
    side = max(spec.image_size, MIN_SIDE)
    fixed = None if args.grade == "pred" else int(args.grade)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with decoded_images(records, spec, args.num_workers, args.out / SKIPPED_NAME if args.skip_bad else None) as dec:
        model.to(device)
        with tqdm(total=len(dec.records), desc=f"Grad-CAM ({layer_name})", unit="img") as bar:
            for span, images in tensor_batches(dec, eval_transform(spec), args.batch_size):
                targets = None if fixed is None else torch.full((len(images),), fixed, dtype=torch.long)
                cams, activated, chosen = grad_cam(model, layer, images.to(device), targets)
                rows += _write_overlays(args.out, dec.records[span], dec.pixels[span], cams, model.grading,
                                        activated, chosen, side)
                bar.update(len(images))
    index = pd.DataFrame(rows)
    index.to_csv(args.out / INDEX_NAME, index=False, float_format="%.4f")
    print(f"[ssl_dr] {len(index)} Grad-CAM overlay(s) of layer {layer_name} in {args.out} (index: {INDEX_NAME})")
    if args.skip_bad:
        print(f"[ssl_dr] skipped {len(dec.skipped)} unreadable image(s), listed in {args.out / SKIPPED_NAME}")
    return index


def _write_overlays(out: Path, records: Sequence[Record], pixels: np.ndarray, cams: torch.Tensor, grading: GradeHead,
                    activated: torch.Tensor, targets: torch.Tensor, side: int) -> list[dict[str, object]]:
    activated = activated.cpu()
    preds = grading.decode(activated).tolist()
    all_probs, scores = grading.probs(activated), grading.score(activated)
    rows = []
    for i, (rec, image, cam, pred, target) in enumerate(zip(records, pixels, cams.cpu().numpy(), preds,
                                                            targets.tolist(), strict=True)):
        probs = None if all_probs is None else all_probs[i].tolist()
        score = None if scores is None else float(scores[i])
        name = f"{rec.id_code}.png"
        if not cv2.imwrite(str(out / name), cv2.cvtColor(overlay(np.asarray(image), cam,
                                                                 caption(pred, target, probs, score), side),
                                                         cv2.COLOR_RGB2BGR)):
            raise InferenceError(f"cannot write {out / name}")
        row: dict[str, object] = {"id_code": rec.id_code, "source": str(rec.path), "overlay": name, "pred": pred}
        if probs is not None:
            row.update(prob=probs[pred], cam_grade=target, cam_prob=probs[target])
        else:
            row.update(score=score, cam_grade=target)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(explain, ExplainArgs, "ssl_dr.explain", argv)


if __name__ == "__main__":
    main()
