"""The shared encoder: a timm model with its classifier removed, and its weights as one portable file.

Both the pretext and the grader wrap the same ``Backbone``; what passes between them is a small
payload ``{"format", "name", "state_dict", "meta"}`` loaded with ``weights_only=True`` and strict key
matching, so a file from another architecture fails loudly instead of half-loading.

ImageNet weights (``pretrained=True``, the ``imagenet`` arm) are loaded by timm itself, from a local file
(read as timm reads one, then ``pretrained_cfg_overlay=dict(state_dict=...)``: .safetensors or a torch .pth/.bin
state dict, torchvision's DenseNet key names mapped by timm) or, with no file, from the Hugging Face hub. Every
way that can fail (offline, missing file, unreadable file, other architecture) ends in one ``BackboneWeightsError``
line that names the config key, the path and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ssl_dr.errors import DataError
from ssl_dr.models.foundation_weights import load_foundation_weights
from ssl_dr.models.weights_memo import read_weights
from ssl_dr.run_contract import write_atomic

WEIGHTS_FORMAT = "ssl_dr.models.backbone/1"


class BackboneWeightsError(DataError):
    """A weights file that cannot initialise this backbone (wrong file, other architecture)."""


class Backbone(nn.Module):
    """timm ``create_model(name, num_classes=0)``: images -> pooled features (1024-d for DenseNet121).

    Arguments are the ``model.backbone.*`` config keys. ``pretrained=False`` (the default, and what
    inference uses before loading a checkpoint) is a random init that never touches the network.
    ``pretrained=True`` starts from timm's ``<name>.<pretrained_tag>`` ImageNet weights, read from
    ``weights_file`` when given, else fetched from the hub; ``weights_source`` records which. Without
    ``pretrained``, ``weights_file`` is not read, so one sweep over arms can name the file for all of them.
    """

    def __init__(self, name: str = "densenet121", pretrained: bool = False, drop_rate: float = 0.0,
                 pretrained_tag: str | None = None, weights_file: str | Path | None = None,
                 weights_format: str | None = None, model_kwargs: dict[str, Any] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.name = name
        # e.g. a ViT's img_size, global_pool, drop_path_rate; plain values (they travel in checkpoints)
        self.model_kwargs = _plain(model_kwargs or {})
        self.weights_source: str | None = None
        if pretrained and weights_format:
            raise BackboneWeightsError("model.backbone: pretrained=true (timm's ImageNet weights) and weights_format "
                                       f"={weights_format} (a foundation model's file) both set; choose one arm")
        if pretrained:
            self.model, self.weights_source = _pretrained_model(name, pretrained_tag, weights_file, drop_rate=drop_rate,
                                                                **self.model_kwargs)
        else:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, drop_rate=drop_rate,
                                           **self.model_kwargs)
        if weights_format:  # a foundation model's file in its own layout (ssl_dr.models.foundation_weights)
            if weights_file is None:
                raise BackboneWeightsError(f"model.backbone.weights_format={weights_format} needs "
                                           "model.backbone.weights_file=<the file>; docs/arms.md says where to get it")
            load_foundation_weights(self.model, weights_file, weights_format)
            self.weights_source = str(Path(weights_file).expanduser().resolve())
        self.num_features: int = self.model.num_features
        # the input statistics the weights were trained with: RETFound and DINOv2 use ImageNet's, where timm's
        # default for the same ViT may be 0.5 / 0.5; null: timm's pretrained config of the model
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Input mean/std the model expects: ``model.backbone.mean/std`` when set, else timm's pretrained config
        of the model (not hard-coded)."""
        data_cfg = timm.data.resolve_model_data_config(self.model)
        return (self.mean or tuple(data_cfg["mean"])), (self.std or tuple(data_cfg["std"]))


def is_vit(model: nn.Module) -> bool:
    """A timm Vision Transformer (or a model built like one: patch embedding, blocks, class/register tokens)."""
    return all(hasattr(model, name) for name in ("patch_embed", "blocks", "num_prefix_tokens"))


def _plain(value: Any) -> Any:
    """Hydra's config containers as plain dicts / lists (a checkpoint loads with ``weights_only=True``)."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _pretrained_model(name: str, tag: str | None, weights_file: str | Path | None, **kwargs: Any
                      ) -> tuple[nn.Module, str]:
    """timm's ImageNet ``<name>.<tag>`` without its head, and where its weights came from (path or hub id).

    Built with its ImageNet head so that timm loads strictly, then the head is dropped: a head-less model
    is loaded non-strictly by timm, which would leave every tensor of a foreign file (another network, a
    Lightning checkpoint) silently at random instead of failing.
    """
    variant = f"{name}.{tag}" if tag else name
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(variant) if timm.is_model(name) else None
    except RuntimeError:  # timm: an unknown tag of a known model
        pretrained_cfg = None
    if pretrained_cfg is None:
        raise BackboneWeightsError(f"model.backbone: timm has no pretrained weights {variant} (check "
                                   "model.backbone.name and model.backbone.pretrained_tag)")
    hub = pretrained_cfg.hf_hub_id or pretrained_cfg.url
    if weights_file is None:
        if not hub:
            raise BackboneWeightsError(f"model.backbone.weights_file is not set and timm knows no download for "
                                       f"{variant}; pass model.backbone.weights_file=<file of its weights>")
        source, path = hub, None
    else:
        path = Path(weights_file).expanduser().resolve()
        if not path.is_file():
            problem = "is a folder, not a file" if path.is_dir() else "not found"
            raise BackboneWeightsError(f"model.backbone.weights_file={weights_file}: {path} {problem}; "
                                       f"{_how_to_get(hub)}")
        source = str(path)
    try:
        model = timm.create_model(variant, pretrained=True, pretrained_cfg_overlay=_overlay(path), **kwargs)
    except Exception as err:  # timm, torch, safetensors and huggingface_hub raise many types
        raise BackboneWeightsError(_load_failure(variant, source, weights_file is not None, hub, err)) from err
    model.pretrained_cfg.pop("state_dict", None)  # timm's copy of the weights, not kept with the model
    model.reset_classifier(0)
    return model, source


def _overlay(path: Path | None) -> dict[str, Any] | None:
    """Where timm takes the weights from: the hub (``None``), or the file's tensors as timm reads them, read once
    per job (``ssl_dr.models.weights_memo``; timm loads a copy). A file without tensors goes to timm by name, whose
    strict load refuses it (given as an empty state dict, timm would fetch the hub's weights instead)."""
    if path is None:
        return None
    state = read_weights(path, lambda file: timm.models.load_state_dict(str(file)))
    return {"state_dict": state} if state else {"file": str(path)}


def _how_to_get(hub: str | None) -> str:
    if hub and "://" not in hub:
        return (f"download the weights once where there is internet (hf download {hub} model.safetensors "
                f"--local-dir <dir>) and pass model.backbone.weights_file=<dir>/model.safetensors")
    return f"download {hub} once and pass model.backbone.weights_file=<that file>"


def _load_failure(variant: str, source: str, from_file: bool, hub: str | None, err: Exception) -> str:
    """One line saying why timm could not load ``variant`` from ``source`` and what to do instead."""
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    if not from_file:
        offline = "; HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") \
            else ""
        return (f"model.backbone.weights_file is not set and {source} cannot be fetched from the Hugging Face hub "
                f"({type(err).__name__}{offline}); {_how_to_get(hub)}")
    if isinstance(err, RuntimeError) and lines and lines[0].startswith("Error(s) in loading state_dict"):
        return (f"model.backbone.weights_file={source} holds no {variant} weights ({_mismatch(lines[1:])}); pass "
                f"the ImageNet checkpoint of this network with its classifier, e.g. {hub}")
    reason = f"{type(err).__name__}: {lines[0].split('. ')[0][:200]}" if lines else type(err).__name__
    return (f"model.backbone.weights_file={source} cannot be read as weights ({reason}); expected a .safetensors "
            f"file or a PyTorch state dict (.pth/.bin); {_how_to_get(hub)}")


def _mismatch(lines: list[str]) -> str:
    """torch's strict-load complaint (thousands of keys) as a count and a first example per kind."""
    kinds: dict[str, list[str]] = {}
    for line in lines:
        label, _, rest = line.partition(":")
        if label.startswith("size mismatch for "):
            kinds.setdefault("size mismatch", []).append(label.removeprefix("size mismatch for "))
        else:
            kinds.setdefault(label.removesuffix(" in state_dict").lower(), []).extend(re.findall(r'"([^"]+)"', rest))
    return "; ".join(f"{kind}: {len(keys)}, e.g. {keys[0]}" for kind, keys in kinds.items() if keys)


def save_backbone(backbone: Backbone, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write the weights payload atomically (temp file + rename) so a crash never leaves a half file."""
    payload = {"format": WEIGHTS_FORMAT, "name": backbone.name,
               "state_dict": {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()},
               "meta": meta or {}}
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


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
