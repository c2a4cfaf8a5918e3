"""Pooled features of a frozen ``Backbone`` for every image of an ``ImageCache``, stored by content key (``store``).

The images go through the fine-tune's own evaluation transform (``build_transform("eval")``: resize, the
backbone's ``normalization()``), and the backbone's ``forward`` is timm's pooled output (``num_classes=0``), so a
probe reads what the fine-tuned head would read at step 0. The key hashes the weights themselves (every tensor of
the state dict), not where they came from: a pretext's file, timm's ImageNet weights and a seeded random init
each get their identity without the caller naming it, and two seeds give two entries.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ssl_dr.data.cache import ImageCache
from ssl_dr.data.transforms import AugmentConfig, build_transform
from ssl_dr.models.backbone import Backbone
from ssl_dr.probes.store import FeatureSet, stored_features

log = logging.getLogger(__name__)


def weights_fingerprint(backbone: Backbone) -> str:
    """Hash of every tensor of the backbone's state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def pooling(backbone: Backbone) -> str:
    """How the timm model pools its last feature map or tokens (``global_pool``: a module or a name)."""
    return str(getattr(backbone.model, "global_pool", "timm default"))


def feature_description(backbone: Backbone, cache: ImageCache, image_size: int) -> dict[str, Any]:
    """What shapes the features: weights, architecture, pooling, the cached images and their preprocessing,
    the network's input size and normalisation."""
    mean, std = backbone.normalization()
    return {"kind": "backbone", "backbone": backbone.name, "model_kwargs": backbone.model_kwargs,
            "weights": weights_fingerprint(backbone), "pooling": pooling(backbone), "images": cache.key,
            "preprocess": {"size": cache.size, "mask": cache.mask, "ben_graham": cache.ben_graham},
            "image_size": int(image_size), "mean": list(mean), "std": list(std)}


class _CacheRows(Dataset):
    """Every row of the image cache, through the evaluation transform."""

    def __init__(self, cache: ImageCache, transform: Any) -> None:
        self.cache, self.transform = cache, transform

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(image=self.cache.row(index))["image"]


def extract_features(backbone: Backbone, cache: ImageCache, cache_dir: str | Path, image_size: int | None = None,
                     batch_size: int = 64, num_workers: int = 0) -> FeatureSet:
    """Features of every image in ``cache`` (rows in ``cache.ids`` order), from ``<cache_dir>/features/<key>/``
    when stored, else extracted once (eval mode, ``torch.inference_mode``, on the device the backbone is on) and
    stored. ``image_size``: the network's input size (default: the cache's, as the fine-tune uses)."""
    size = cache.size if image_size is None else image_size

    def compute() -> tuple[list[str], np.ndarray]:
        return list(cache.ids), _forward_all(backbone, cache, size, batch_size, num_workers)

    return stored_features(cache_dir, feature_description(backbone, cache, size), compute)


def _forward_all(backbone: Backbone, cache: ImageCache, size: int, batch_size: int, num_workers: int) -> np.ndarray:
    mean, std = backbone.normalization()
    transform = build_transform("eval", size, mean, std, AugmentConfig(), seed=0)  # eval: resize, normalise only
    loader = DataLoader(_CacheRows(cache, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    parts = []
    try:
        with torch.inference_mode(), tqdm(total=len(cache), unit="img",
                                          desc=f"features of {len(cache)} images ({backbone.name}, {size} px)") as bar:
            for images in loader:
                parts.append(backbone(images.to(device)).float().cpu().numpy())
                bar.update(len(images))
    finally:
        backbone.train(was_training)
    dim = backbone.num_features
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
