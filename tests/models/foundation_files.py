"""Random-weight ViTs written in the layouts foundation models are published in (``ssl_dr.models.foundation_weights``),
so the tests load real file layouts without downloading real weights. Each writer returns the timm model whose
weights the file holds (to compare against after loading)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch import nn


def _vit(name: str, img_size: int, global_pool: str = "token") -> nn.Module:
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, global_pool=global_pool)


def write_retfound_mae(path: Path, name: str = "vit_small_patch16_224", img_size: int = 64) -> nn.Module:
    """MAE's checkpoint: the encoder (with its final ``norm``) under ``model``, beside ``mask_token`` and the pixel
    decoder (``decoder_*``), plus optimiser state and epoch as MAE's training script saves them."""
    encoder = _vit(name, img_size)
    width = encoder.num_features
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    state.update({"mask_token": torch.zeros(1, 1, width), "decoder_embed.weight": torch.randn(16, width),
                  "decoder_embed.bias": torch.zeros(16), "decoder_pos_embed": torch.zeros(1, 5, 16),
                  "decoder_blocks.0.norm1.weight": torch.ones(16), "decoder_norm.weight": torch.ones(16),
                  "decoder_pred.weight": torch.randn(768, 16)})
    torch.save({"model": state, "optimizer": {"state": {}}, "epoch": 799}, path)
    return encoder


def write_retfound_dinov2(path: Path, name: str = "vit_small_patch14_dinov2", img_size: int = 56) -> nn.Module:
    """DINOv2's training checkpoint: ``teacher`` weights under ``backbone.`` with DINOv2's own names (``mlp.w12``,
    ``mlp.w3``, ``mask_token``), its ``dino_head``, and the student beside it."""
    encoder = _vit(name, img_size)
    renamed = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3."): v.clone()
               for k, v in encoder.state_dict().items()}
    teacher = {f"backbone.{k}": v for k, v in renamed.items()}
    teacher["backbone.mask_token"] = torch.zeros(1, encoder.num_features)
    teacher["dino_head.mlp.0.weight"] = torch.randn(32, encoder.num_features)
    torch.save({"teacher": teacher, "student": {"backbone.cls_token": torch.zeros(1)}, "iteration": 1}, path)
    return encoder


def write_timm(path: Path, name: str = "vit_small_patch14_dinov2", img_size: int = 56) -> nn.Module:
    """A state dict as timm writes it (``.safetensors``), as on the Hugging Face hub."""
    encoder = _vit(name, img_size)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return encoder
