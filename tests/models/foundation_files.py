"""Random-weight ViTs written in the layouts foundation models are published in (``ssl_dr.models.foundation_weights``),
so the tests load real file layouts without downloading real weights. Each writer returns the timm model whose
weights the file holds (to compare against after loading).

The layouts, from the projects' own code:
- DINOv2 (facebookresearch/dinov2 ``DinoVisionTransformer``; hub files ``dinov2_vit*14*_pretrain.pth``, a bare state
  dict): ``cls_token`` (1, 1, D); ``pos_embed`` (1, 1 + patches, D), the class token's position first;
  ``register_tokens`` (1, R, D) in the ``_reg`` variants, which take no position (timm's ``_reg`` ViTs fold the
  class position into ``cls_token`` instead); ``mask_token`` (1, D); ``patch_embed.proj``; blocks of ``norm1``,
  ``attn.qkv``, ``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``/``mlp.fc2`` (the fused SwiGLU ``mlp.w12``/``w3``
  in ViT-g/14 only), ``ls2.gamma``; final ``norm``. Its training checkpoints (``teacher_checkpoint.pth``) hold
  ``{"teacher": ...}`` with the backbone under ``backbone.`` beside ``dino_head``/``ibot_head``, the blocks as
  ``blocks.<chunk>.<i>.`` when trained with ``block_chunks`` (i counts over the whole network).
- RETFound-MAE (MAE's ``main_pretrain.py``): ``{"model": ...}`` with the encoder (with its final ``norm``), MAE's
  decoder-side ``mask_token`` (1, 1, decoder width) and ``decoder_*``, plus optimiser state and epoch.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.layers import GluMlp
from torch import nn

TINY_VIT = {"depth": 4, "embed_dim": 48, "num_heads": 2}
"""Shrinks any timm ViT to seconds (a tiny giant keeps its SwiGLU: timm scales its hidden width by mlp_ratio)."""


def vit(name: str, img_size: int, global_pool: str = "token", **kwargs) -> nn.Module:
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, global_pool=global_pool,
                              **kwargs)
    with torch.no_grad():  # timm starts layer scale at 1e-5, which would hide most of each block from a comparison
        for name_, param in model.named_parameters():
            if name_.endswith(".gamma"):
                param.uniform_(0.5, 1.5)
    return model.eval()


def dinov2_layout(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A timm DINOv2 ViT's weights named and shaped as Meta's ``DinoVisionTransformer`` holds them (the reverse of
    timm's conversion): registers as ``register_tokens``, the class token's position back in ``pos_embed``,
    ``mask_token``, and a packed SwiGLU as ``mlp.w12``/``mlp.w3``."""
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    width = encoder.num_features
    if "reg_token" in state:  # timm: cls_token + class position, pos_embed for the patches only
        class_position = torch.randn(1, 1, width) * 0.02
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - class_position
        state["pos_embed"] = torch.cat([class_position, state["pos_embed"]], dim=1)
    if isinstance(encoder.blocks[0].mlp, GluMlp):
        state = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."): v for k, v in state.items()}
    state["mask_token"] = torch.zeros(1, width)
    return state


def write_dinov2_hub(path: Path, name: str = "vit_small_patch14_dinov2", img_size: int = 56, **kwargs) -> nn.Module:
    """Meta's hub release: the bare state dict of ``DinoVisionTransformer`` (``block_chunks=0``)."""
    encoder = vit(name, img_size, **kwargs)
    torch.save(dinov2_layout(encoder), path)
    return encoder


def write_retfound_dinov2(path: Path, name: str = "vit_small_patch14_dinov2", img_size: int = 56, chunks: int = 2,
                          **kwargs) -> nn.Module:
    """DINOv2's training checkpoint: the ``teacher``'s backbone under ``backbone.``, its blocks in ``chunks`` chunks
    (``blocks.<chunk>.<i>.``), beside the DINO and iBOT heads (a weight-normed last layer each)."""
    encoder = vit(name, img_size, **kwargs)
    chunk_size = len(encoder.blocks) // chunks  # as DinoVisionTransformer splits them
    teacher = {}
    for key, value in dinov2_layout(encoder).items():
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // chunk_size}.{key.removeprefix('blocks.')}"
        teacher[f"backbone.{key}"] = value
    for head in ("dino_head", "ibot_head"):
        teacher |= {f"{head}.mlp.0.weight": torch.randn(32, encoder.num_features),
                    f"{head}.mlp.0.bias": torch.zeros(32), f"{head}.last_layer.weight_g": torch.ones(64, 1),
                    f"{head}.last_layer.weight_v": torch.randn(64, 32)}
    torch.save({"teacher": teacher}, path)
    return encoder


def write_retfound_mae(path: Path, name: str = "vit_small_patch16_224", img_size: int = 64, **kwargs) -> nn.Module:
    """MAE's checkpoint: the encoder (with its final ``norm``) under ``model``, beside the decoder's ``mask_token``
    and the pixel decoder (``decoder_*``), plus optimiser state and epoch as MAE's training script saves them."""
    encoder = vit(name, img_size, **kwargs)
    tokens, decoder = encoder.pos_embed.shape[1], 16
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    state.update({"mask_token": torch.zeros(1, 1, decoder), "decoder_embed.bias": torch.zeros(decoder),
                  "decoder_embed.weight": torch.randn(decoder, encoder.num_features),
                  "decoder_pos_embed": torch.zeros(1, tokens, decoder), "decoder_norm.weight": torch.ones(decoder),
                  "decoder_blocks.0.norm1.weight": torch.ones(decoder),
                  "decoder_pred.weight": torch.randn(768, decoder)})
    torch.save({"model": state, "optimizer": {"state": {}}, "epoch": 799}, path)
    return encoder


def write_timm(path: Path, name: str = "vit_small_patch14_dinov2", img_size: int = 56, **kwargs) -> nn.Module:
    """A state dict as timm writes it (``.safetensors``), as on the Hugging Face hub."""
    encoder = vit(name, img_size, **kwargs)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return encoder
