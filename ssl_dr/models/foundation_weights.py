"""Foundation-model weight files, read in the layout their projects publish them, into a timm ViT.

``model.backbone.weights_format`` names the layout of ``model.backbone.weights_file`` (nothing is downloaded):
``retfound_mae`` (RETFound, Zhou et al., Nature 2023: an MAE encoder under ``model``), ``retfound_dinov2`` (the
``teacher`` of a DINOv2 training checkpoint, chunked blocks un-chunked) or ``timm`` (timm's own layout, or Meta's
DINOv2 release). Each layout is reduced to the encoder's tensors and passed through timm's
``vision_transformer.checkpoint_filter_fn``; the non-strict load that follows may miss only the keys the fine-tune
adds (``head.*``, ``fc_norm.*``). Anything else missing or left over means the file is not this network's: one
``FoundationWeightsError`` naming the file, the format and the first keys, before any training. What each layout
holds and drops: docs/arms.md, "Foundation-model arms".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_dr.errors import DataError
from ssl_dr.models.weights_memo import read_weights

WEIGHTS_FORMATS = ("retfound_mae", "retfound_dinov2", "timm")
CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
"""DINOv2's ``block_chunks`` (4 in its ViT-L/g training configs) nests each block in a chunk, keeping the block's
index over the whole network: ``blocks.<chunk>.<i>.`` is timm's ``blocks.<i>.``."""
FRESH_KEYS = ("head.", "fc_norm.")
"""Keys a foundation file need not hold: the fine-tune trains them from scratch."""


class FoundationWeightsError(DataError):
    """A weights file that does not hold this ViT in the named layout."""


def read_state_dict(path: Path) -> dict[str, Any]:
    """The top-level mapping of a ``.safetensors`` or torch file (``weights_only``: no code runs on load)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise FoundationWeightsError(f"{path} holds a {type(payload).__name__}, not a state dict")
    return payload


def encoder_state(payload: dict[str, Any], weights_format: str, uses_fc_norm: bool) -> dict[str, torch.Tensor]:
    """The ViT encoder's tensors of a file in ``weights_format``, before timm's key conversion."""
    if weights_format == "retfound_mae":
        state = _section(payload, "model")
        state = {k: v for k, v in state.items()
                 if not (k == "mask_token" or k.startswith(("decoder_", "head.")))}
        if uses_fc_norm:  # average pooling + fc_norm replaces the encoder's final norm (RETFound's fine-tune)
            state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        return state
    if weights_format == "retfound_dinov2":
        teacher = _section(payload, "teacher")
        return unchunk({k.removeprefix("backbone."): v for k, v in teacher.items() if k.startswith("backbone.")})
    if weights_format == "timm":
        state = payload.get("state_dict", payload.get("model", payload))
        return unchunk({k: v for k, v in state.items() if not k.startswith("head.")})
    raise FoundationWeightsError(f"model.backbone.weights_format={weights_format!r} is not one of "
                                 f"{', '.join(WEIGHTS_FORMATS)}")


def unchunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``blocks.<chunk>.<i>.`` keys (a DINOv2 model trained with ``block_chunks``) as ``blocks.<i>.``."""
    return {CHUNKED_BLOCK.sub(r"blocks.\1.", key): value for key, value in state.items()}


def check_feed_forward(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse DINOv2's fused SwiGLU feed-forward (``mlp.w12``: ViT-g/14) for a ViT whose MLP is not gated: renaming
    ``w12``/``w3`` to ``fc1``/``fc2`` would load tensors of another function (and size)."""
    from timm.layers import GluMlp

    swiglu = next((key for key in state if ".mlp.w12." in key), None)
    if swiglu is not None and not isinstance(model.blocks[0].mlp, GluMlp):
        raise FoundationWeightsError(
            f"the file's feed-forward is DINOv2's fused SwiGLU ({swiglu} {tuple(state[swiglu].shape)}, the ViT-g/14 "
            f"layout), which this plain-MLP ViT cannot hold; for a ViT-g/14 file set "
            "model.backbone.name=vit_giant_patch14_dinov2 (vit_giant_patch14_reg4_dinov2 with registers)")


def load_foundation_weights(model: nn.Module, path: str | Path, weights_format: str) -> None:
    """Initialise the timm ViT ``model`` from ``path`` in ``weights_format``; raise one clear error otherwise."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    where = f"model.backbone.weights_file={path} (weights_format={weights_format})"
    path = Path(path).expanduser()
    if weights_format not in WEIGHTS_FORMATS:
        raise FoundationWeightsError(f"model.backbone.weights_format={weights_format!r} is not one of "
                                     f"{', '.join(WEIGHTS_FORMATS)}")
    if not isinstance(model, VisionTransformer):
        raise FoundationWeightsError(f"{where}: weights_format is for timm ViTs, not {type(model).__name__}; set "
                                     "model.backbone.name to a vit_* model (e.g. vit_large_patch16_224)")
    if not path.is_file():
        raise FoundationWeightsError(f"{where}: {'a folder, not a file' if path.is_dir() else 'file not found'}; "
                                     "docs/arms.md says where each foundation model's file comes from")
    try:
        payload = read_weights(path, read_state_dict)  # once per job: ssl_dr.models.weights_memo
    except FoundationWeightsError as err:
        raise FoundationWeightsError(f"{where}: {err}") from None
    except Exception as err:  # torch / safetensors raise many types for foreign or truncated files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise FoundationWeightsError(f"{where}: not a readable weights file ({type(err).__name__}: {first})") from None
    try:
        state = encoder_state(payload, weights_format, uses_fc_norm=not isinstance(model.fc_norm, nn.Identity))
        check_feed_forward(state, model)
        state = checkpoint_filter_fn(state, model)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except FoundationWeightsError as err:
        raise FoundationWeightsError(f"{where}: {err}") from None
    except RuntimeError as err:  # size mismatches: another width or patch size
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise FoundationWeightsError(f"{where} does not fit {type(model).__name__} of this size "
                                     f"({len(lines)} size mismatch(es), e.g. {lines[0][:200] if lines else err}); "
                                     "check model.backbone.name") from None
    missing = [k for k in missing if not k.startswith(FRESH_KEYS)]
    if not missing and unexpected and all(k.startswith("norm.") for k in unexpected):
        # the file keeps its final norm, which timm's average-pooled ViT replaces by a fresh fc_norm
        raise FoundationWeightsError(f"{where}: the file's final norm ({', '.join(unexpected)}) has no place in an "
                                     "average-pooled ViT with fc_norm; keep it with "
                                     "+model.backbone.model_kwargs.fc_norm=false (as RETFound-Green pools), or pool "
                                     "on the class token (model.backbone.model_kwargs.global_pool=token)")
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else ""]
        raise FoundationWeightsError(f"{where} does not hold this network's encoder: "
                                     f"{'; '.join(p for p in parts if p)} key(s); check the file, "
                                     "model.backbone.name and model.backbone.weights_format")


def _section(payload: dict[str, Any], key: str) -> dict[str, Any]:
    section = payload.get(key)
    if not isinstance(section, dict):
        found = ", ".join(sorted(str(k) for k in payload)[:5])
        raise FoundationWeightsError(f"no '{key}' state dict in the file (top-level keys: {found or 'none'})")
    return section
