"""Foundation-model arms (``arm=retfound | retfound_dinov2 | dinov2``): each published file layout loads into its
timm ViT and computes what the network it was written from computes (random weights written in that layout:
tests.models.foundation_files), a wrong file is refused in one line before any training, each arm fine-tunes end to
end on the built-in data, and layer-wise learning-rate decay gives each depth the published rule's rate through a
torch scheduler."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ssl_dr.models.backbone import Backbone, save_backbone
from ssl_dr.models.classifier import DRClassifier
from ssl_dr.models.foundation_weights import FoundationWeightsError
from ssl_dr.models.optim import configure_optimizers, layer_decay_groups, warmup_cosine
from ssl_dr.train import train
from tests.conftest import TINY
from tests.models.foundation_files import (
    TINY_VIT,
    write_dinov2_hub,
    write_retfound_dinov2,
    write_retfound_mae,
    write_timm,
)

SMALL = {  # arm -> (a small ViT of its family, the writer of its layout, an input size fitting its patches)
    "retfound": ("vit_small_patch16_224", write_retfound_mae, 32),
    "retfound_dinov2": ("vit_small_patch14_dinov2", write_retfound_dinov2, 28),
    "dinov2": ("vit_small_patch14_dinov2", write_timm, 28),
}
FORMATS = {"retfound": "retfound_mae", "retfound_dinov2": "retfound_dinov2", "dinov2": "timm"}


@pytest.mark.parametrize("arm", sorted(SMALL))
def test_each_layout_loads_every_encoder_tensor(tmp_path, arm):
    """The encoder's tensors are the file's (the position embedding resampled from the file's grid to the run's
    input size); the decoder, mask token, DINO head and final norm of an average-pooled model are left out."""
    name, write, size = SMALL[arm]
    path = tmp_path / ("weights.safetensors" if arm == "dinov2" else "weights.pth")
    written = write(path, name)
    pool = "avg" if arm == "retfound" else "token"
    backbone = Backbone(name, weights_format=FORMATS[arm], weights_file=path,
                        model_kwargs={"img_size": size, "global_pool": pool})
    loaded, source = backbone.model.state_dict(), written.state_dict()
    for key, value in loaded.items():
        if key == "pos_embed":
            assert value.shape[1] < source[key].shape[1]  # the file's 4x4 grid resampled to 2x2
        elif key.startswith("fc_norm."):
            assert arm == "retfound"  # trained fresh, as RETFound fine-tunes
        else:
            assert torch.equal(value, source[key]), key
    assert backbone.weights_source == str(path.resolve())


def test_a_register_token_dinov2_file_loads(tmp_path):
    written = write_timm(tmp_path / "reg.safetensors", "vit_small_patch14_reg4_dinov2")
    backbone = Backbone("vit_small_patch14_reg4_dinov2", weights_format="timm",
                        weights_file=tmp_path / "reg.safetensors", model_kwargs={"img_size": 28})
    assert torch.equal(backbone.model.reg_token, written.reg_token)


LAYOUTS = {  # a published layout -> (its writer, weights_format, the timm ViT it loads into, pooling)
    "dinov2_hub": (write_dinov2_hub, "timm", "vit_small_patch14_dinov2", "token"),
    "dinov2_hub_registers": (write_dinov2_hub, "timm", "vit_small_patch14_reg4_dinov2", "token"),
    "dinov2_hub_giant_swiglu": (write_dinov2_hub, "timm", "vit_giant_patch14_dinov2", "token"),
    "dinov2_training_chunked": (write_retfound_dinov2, "retfound_dinov2", "vit_small_patch14_dinov2", "token"),
    "dinov2_training_chunked_registers": (write_retfound_dinov2, "retfound_dinov2", "vit_small_patch14_reg4_dinov2",
                                          "token"),
    "retfound_mae": (write_retfound_mae, "retfound_mae", "vit_large_patch16_224", "avg"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_published_layout_computes_what_its_network_computed(tmp_path, layout):
    """Loaded into a freshly built (tiny) ViT, each file gives the written network's token features and pooled
    features; the same ViT built without the file does not. RETFound's fine-tune pools the last block's tokens by
    averaging into a fresh fc_norm in place of the file's final norm, so the written network is compared so pooled."""
    write, weights_format, name, pool = LAYOUTS[layout]
    size, path = (32 if "patch16" in name else 28), tmp_path / "weights.pth"
    written = write(path, name, size, **TINY_VIT)
    build = partial(Backbone, name, model_kwargs={"img_size": size, "global_pool": pool, **TINY_VIT})
    loaded = build(weights_format=weights_format, weights_file=path).model.eval()
    if pool == "avg":
        written.norm, written.global_pool, written.fc_norm = nn.Identity(), "avg", loaded.fc_norm
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features, pooled = written.forward_features(images), written(images)
        assert torch.allclose(loaded.forward_features(images), features, atol=1e-5)
        assert torch.allclose(loaded(images), pooled, atol=1e-5)
        assert not torch.allclose(build().model.eval()(images), pooled, atol=1e-3)


def test_the_layouts_hold_dinov2s_own_names_and_shapes(tmp_path):
    """Facts of facebookresearch/dinov2 the writers must follow: plain MLP ``fc1``/``fc2`` below ViT-g, SwiGLU
    ``w12`` of 2 x ((int(4 D x 2 / 3) + 7) // 8 x 8) rows in ViT-g, registers apart from ``pos_embed``, training
    blocks chunked as ``blocks.<chunk>.<i>.``."""
    write_dinov2_hub(tmp_path / "reg.pth", "vit_small_patch14_reg4_dinov2", 28, **TINY_VIT)
    write_dinov2_hub(tmp_path / "giant.pth", "vit_giant_patch14_dinov2", 28, **TINY_VIT)
    write_retfound_dinov2(tmp_path / "train.pth", "vit_small_patch14_dinov2", 28, **TINY_VIT)
    reg, giant = torch.load(tmp_path / "reg.pth"), torch.load(tmp_path / "giant.pth")
    teacher = torch.load(tmp_path / "train.pth")["teacher"]
    width = TINY_VIT["embed_dim"]
    assert reg["register_tokens"].shape == (1, 4, width) and reg["pos_embed"].shape == (1, 1 + 2 * 2, width)
    assert reg["mask_token"].shape == (1, width) and reg["blocks.0.ls1.gamma"].shape == (width,)
    assert "blocks.0.mlp.fc1.weight" in reg and not any(".w12." in k for k in reg)
    assert giant["blocks.0.mlp.w12.weight"].shape == (2 * ((int(4 * width * 2 / 3) + 7) // 8 * 8), width)
    assert {"backbone.blocks.0.1.norm1.weight", "backbone.blocks.1.2.norm1.weight"} <= set(teacher)
    assert not any(k.startswith("backbone.blocks.2.") for k in teacher)


def test_a_swiglu_giant_file_is_refused_by_a_plain_mlp_vit_in_one_line(tmp_path):
    write_dinov2_hub(tmp_path / "giant.pth", "vit_giant_patch14_dinov2", 28, **TINY_VIT)
    with pytest.raises(FoundationWeightsError) as refused:
        Backbone("vit_small_patch14_dinov2", weights_format="timm", weights_file=tmp_path / "giant.pth",
                 model_kwargs={"img_size": 28, **TINY_VIT})
    message = str(refused.value)
    assert "\n" not in message and "giant.pth" in message
    assert "fused SwiGLU (blocks.0.mlp.w12.weight (256, 48)" in message
    assert "model.backbone.name=vit_giant_patch14_dinov2" in message


def test_retfound_green_pools_by_averaging_after_its_own_final_norm(tmp_path, tiny_cfg):
    """RETFound-Green (a timm reg4 DINOv2 ViT-S/14 file, pooled by averaging after its final norm, statistics 0.5)
    loads as docs/arms.md says; average pooling with a fresh fc_norm names the fix instead."""
    written = write_timm(tmp_path / "green.safetensors", "vit_small_patch14_reg4_dinov2")
    cfg = tiny_cfg("experiment=dinov2", "model.backbone.name=vit_small_patch14_reg4_dinov2",
                   f"model.backbone.weights_file={tmp_path / 'green.safetensors'}", "data.image_size=28",
                   "model.backbone.model_kwargs.global_pool=avg", "+model.backbone.model_kwargs.fc_norm=false",
                   "model.backbone.mean=[0.5,0.5,0.5]", "model.backbone.std=[0.5,0.5,0.5]")
    backbone = instantiate(cfg.model.backbone)
    assert torch.equal(backbone.model.norm.weight, written.norm.weight) and backbone.model.global_pool == "avg"
    assert backbone.normalization() == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(FoundationWeightsError, match=r"final norm .* keep it with \+model.backbone.model_kwargs"):
        Backbone("vit_small_patch14_reg4_dinov2", weights_format="timm", weights_file=tmp_path / "green.safetensors",
                 model_kwargs={"img_size": 28, "global_pool": "avg"})


def test_wrong_files_are_refused_naming_the_keys(tmp_path):
    write_retfound_mae(tmp_path / "mae.pth")
    densenet = tmp_path / "densenet.pt"
    save_backbone(Backbone("densenet121"), densenet)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "mae.pth").read_bytes()[:5000])
    vit = partial(Backbone, "vit_small_patch16_224", model_kwargs={"img_size": 32, "global_pool": "avg"})

    with pytest.raises(FoundationWeightsError, match=r"densenet.pt .*does not hold this network's encoder: \d+ "
                                                     r"missing \(e.g. cls_token.*\d+ unexpected \(e.g. features"):
        vit(weights_format="timm", weights_file=densenet)
    with pytest.raises(FoundationWeightsError, match=r"no 'teacher' state dict in the file \(top-level keys: epoch"):
        vit(weights_format="retfound_dinov2", weights_file=tmp_path / "mae.pth")
    with pytest.raises(FoundationWeightsError, match=r"truncated.pth .*not a readable weights file"):
        vit(weights_format="retfound_mae", weights_file=truncated)
    with pytest.raises(FoundationWeightsError, match=r"does not fit VisionTransformer of this size"):
        Backbone("vit_base_patch16_224", weights_format="retfound_mae", weights_file=tmp_path / "mae.pth",
                 model_kwargs={"img_size": 32, "global_pool": "avg"})
    with pytest.raises(FoundationWeightsError, match=r"for timm ViTs, not DenseNet"):
        Backbone("densenet121", weights_format="retfound_mae", weights_file=tmp_path / "mae.pth")
    with pytest.raises(FoundationWeightsError, match=r"file not found"):
        vit(weights_format="retfound_mae", weights_file=tmp_path / "missing.pth")


def test_the_command_refuses_a_densenet_file_in_one_line(tmp_path):
    densenet = tmp_path / "densenet.pt"
    save_backbone(Backbone("densenet121"), densenet)
    done = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=dinov2", *TINY,
                           f"paths.root_dir={tmp_path}", "model.backbone.name=vit_small_patch14_dinov2",
                           f"model.backbone.weights_file={densenet}"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "densenet.pt" in errors[0] and "missing" in errors[0] and "unexpected" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache" / "images").exists()  # refused before any data work


@pytest.mark.parametrize("arm", sorted(SMALL))
def test_each_foundation_arm_fine_tunes_end_to_end(tiny_cfg, tmp_path, arm):
    name, write, size = SMALL[arm]
    path = tmp_path / ("weights.safetensors" if arm == "dinov2" else "weights.pth")
    write(path, name)
    result = train(tiny_cfg(f"experiment={arm}", f"model.backbone.name={name}", f"model.backbone.weights_file={path}",
                            f"data.image_size={size}"))
    assert result["arm"] == arm and result["init"] == "foundation"
    assert result["init/weights"] == str(path.resolve()) and result["finetune/freeze_steps"] == 1
    assert 0 <= result["test/acc"] <= 1
    spec = torch.load(Path(result["output_dir"]) / "checkpoints" / "best.ckpt", weights_only=True,
                      map_location="cpu")["hyper_parameters"]["inference"]
    assert spec["backbone"] == name and spec["model_kwargs"]["img_size"] == size
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet's, not timm's 0.5 for a plain ViT
    assert json.loads((Path(result["output_dir"]) / "metrics.json").read_text())["init"] == "foundation"


def test_a_foundation_file_needs_the_foundation_init(tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"init=random with model.backbone.weights_format=timm"):
        train(tiny_cfg("experiment=baseline", "model.backbone.weights_format=timm"))
    with pytest.raises(ValueError, match=r"weights_format=retfound_mae needs model.backbone.weights_file"):
        train(tiny_cfg("experiment=retfound", "model.backbone.weights_file=null"))


def test_layer_decay_gives_each_depth_its_rate_after_an_optimiser_step(tiny_cfg):
    """RETFound's recipe through a torch scheduler: after one step, block d of 12 trains at
    lr x 0.65^(13 - d) x the schedule's factor, the head at lr x that factor (timm only tags groups)."""
    cfg = tiny_cfg("experiment=retfound", "model.backbone.name=vit_small_patch16_224",
                   "model.backbone.weights_format=null", "data.image_size=32", "model.classifier.freeze_steps=0")
    backbone = instantiate(cfg.model.backbone)
    module = instantiate(cfg.model.classifier, backbone=backbone)
    assert isinstance(module, DRClassifier) and module.layer_decay == 0.65
    optimizer = configure_optimizers(module, module.optimizer_factory, partial(warmup_cosine, warmup_steps=0,
                                                                                total_steps=10), interval="step",
                                     layer_decay=module.layer_decay)
    opt, scheduler = optimizer["optimizer"], optimizer["lr_scheduler"]["scheduler"]
    module.grading.loss(module(torch.randn(2, 3, 32, 32)), torch.tensor([0, 3]), None).backward()
    opt.step()
    scheduler.step()
    factor = scheduler.lr_lambdas[0](1)
    rate = {id(p): group["lr"] for group in opt.param_groups for p in group["params"]}
    base = 3.0e-4
    assert rate[id(module.head[1].weight)] == pytest.approx(base * factor)
    for depth in (0, 5, 11):
        block = backbone.model.blocks[depth].attn.qkv.weight
        assert rate[id(block)] == pytest.approx(base * factor * 0.65 ** (12 - depth))
    assert rate[id(backbone.model.patch_embed.proj.weight)] == pytest.approx(base * factor * 0.65 ** 13)
    assert len({round(r, 12) for r in rate.values()}) == 14  # stem, 12 blocks, top (final norm + head)
    names = [group["name"] for group in opt.param_groups]  # what the learning-rate monitor logs them as
    assert len(set(names)) == len(names) and names[-2:] == ["head", "head-no_decay"]
    assert {"layer00", "layer12", "layer13-no_decay"} <= set(names)
    decays = {id(p): group["weight_decay"] for group in opt.param_groups for p in group["params"]}
    assert decays[id(backbone.model.blocks[0].attn.qkv.weight)] == 0.05
    assert decays[id(backbone.model.blocks[0].attn.qkv.bias)] == 0.0  # biases, norms, tokens: no decay


def published_scale(name: str, depth: int, decay: float) -> float:
    """BEiT's / MAE's / RETFound's ``util/lr_decay.py`` rule, written out: tokens, position and patch embedding are
    layer 0, ``blocks.i`` layer i + 1, everything after the last block layer depth + 1; scale decay^(depth + 1 -
    layer)."""
    if name in ("cls_token", "reg_token", "pos_embed") or name.startswith("patch_embed."):
        layer = 0
    elif name.startswith("blocks."):
        layer = int(name.split(".")[1]) + 1
    else:
        layer = depth + 1
    return decay ** (depth + 1 - layer)


ARM_VITS = {  # the arms' ViTs (conf/model/vit_*.yaml), tiny: name, pooling, input size
    "dinov2_class_token": ("vit_small_patch14_dinov2", "token", 28),
    "dinov2_registers_class_token": ("vit_small_patch14_reg4_dinov2", "token", 28),
    "retfound_average_fc_norm": ("vit_large_patch16_224", "avg", 32),
    "mae_average_fc_norm": ("vit_small_patch8_224", "avg", 16),
}


@pytest.mark.parametrize("vit", sorted(ARM_VITS))
def test_layer_decay_follows_the_published_rule_for_every_pooling(vit):
    """Every encoder tensor's rate is lr x the rule's scale (a class-token ViT's last block at 0.65, not at the full
    rate), the head trains at lr, and no 1-D tensor, token or head bias gets weight decay."""
    name, pool, size = ARM_VITS[vit]
    backbone = Backbone(name, model_kwargs={"img_size": size, "global_pool": pool, **TINY_VIT})
    module = DRClassifier(backbone, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05))
    groups = layer_decay_groups(module, module.optimizer_factory, 0.65)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    decay = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    group_of = {id(p): group["name"] for group in groups for p in group["params"]}
    depth = TINY_VIT["depth"]
    assert len(rate) == len(list(module.parameters()))
    for key, param in backbone.model.named_parameters():
        assert rate[id(param)] == pytest.approx(1e-3 * published_scale(key, depth, 0.65)), key
        no_decay = param.ndim == 1 or key in ("cls_token", "reg_token", "pos_embed")
        assert decay[id(param)] == (0.0 if no_decay else 0.05), key
    assert rate[id(backbone.model.blocks[-1].attn.qkv.weight)] == pytest.approx(1e-3 * 0.65)
    assert group_of[id(backbone.model.patch_embed.proj.weight)] == "layer00"
    assert group_of[id(backbone.model.blocks[0].attn.qkv.weight)] == "layer01"
    top = backbone.model.fc_norm if pool == "avg" else backbone.model.norm
    assert group_of[id(top.weight)] == f"layer{depth + 1:02d}-no_decay" and rate[id(top.weight)] == 1e-3
    linear = module.head[1]
    assert (rate[id(linear.weight)], decay[id(linear.weight)], group_of[id(linear.weight)]) == (1e-3, 0.05, "head")
    assert (rate[id(linear.bias)], decay[id(linear.bias)], group_of[id(linear.bias)]) == (1e-3, 0.0, "head-no_decay")


def test_without_layer_decay_every_parameter_keeps_one_rate_and_weight_decay():
    """The DenseNet fine-tune's path (layer_decay=null) is one group: the head's bias decays as before."""
    module = DRClassifier(Backbone("resnet10t"), optimizer=partial(torch.optim.AdamW, lr=3e-4, weight_decay=1e-4))
    opt = configure_optimizers(module, module.optimizer_factory, None)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-4
    assert len(opt.param_groups[0]["params"]) == len(list(module.parameters()))
