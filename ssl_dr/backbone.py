"""The shared encoder: a timm model with its classifier removed, and its weights as one portable file.

Both the pretext and the grader wrap the same ``Backbone``; what passes between them is a small
payload ``{"format", "name", "state_dict", "meta"}`` loaded with ``weights_only=True`` and strict key
matching, so a file from another architecture fails loudly instead of half-loading.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

WEIGHTS_FORMAT = "ssl_dr.backbone/1"


class BackboneWeightsError(ValueError):
    """A weights file that cannot initialise this backbone (wrong file, other architecture)."""


class Backbone(nn.Module):
    """timm ``create_model(name, num_classes=0)``: images -> pooled features (1024-d for DenseNet121)."""

    def __init__(self, name: str = "densenet121", pretrained: bool = False, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, drop_rate=drop_rate)
        self.num_features: int = self.model.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Input mean/std the model expects, from timm's pretrained config (not hard-coded)."""
        data_cfg = timm.data.resolve_model_data_config(self.model)
        return tuple(data_cfg["mean"]), tuple(data_cfg["std"])


def save_backbone(backbone: Backbone, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write the weights payload atomically (temp file + rename) so a crash never leaves a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": WEIGHTS_FORMAT, "name": backbone.name,
               "state_dict": {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()},
               "meta": meta or {}}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_backbone(backbone: Backbone, path: str | Path) -> dict[str, Any]:
    """Initialise ``backbone`` from a file written by ``save_backbone``; returns the file's meta."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign/corrupt files
        raise BackboneWeightsError(f"{path} is not a readable weights file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise BackboneWeightsError(f"{path} is not an ssl_dr backbone file (expected format {WEIGHTS_FORMAT})")
    if payload["name"] != backbone.name:
        raise BackboneWeightsError(f"{path} holds a {payload['name']} backbone, but model.backbone.name is "
                                   f"{backbone.name}; use matching weights or change the backbone name")
    try:
        backbone.model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:  # missing/unexpected keys or shape mismatch: never a partial load
        first_lines = "; ".join(str(err).splitlines()[:3])
        raise BackboneWeightsError(f"{path} does not fit this {backbone.name}: {first_lines}") from err
    return dict(payload.get("meta", {}))
