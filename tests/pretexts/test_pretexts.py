"""Jigsaw and SimCLR on the shared pretext base: exact batch construction, the loss by hand, a fixed
permutation set, arms that choose their pretext (also in a sweep), distinct store keys, and a tiny run
of each through the real config."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from ssl_dr.data.records import Record
from ssl_dr.data.transforms import ContrastiveAugment, ContrastiveViews, build_contrastive_transform
from ssl_dr.errors import ConfigError
from ssl_dr.models.backbone import Backbone
from ssl_dr.pretexts import build_pretext
from ssl_dr.pretexts.jigsaw import (
    JigsawPretext,
    cell_geometry,
    central_crop,
    jigsaw_batch,
    maximal_hamming_permutations,
)
from ssl_dr.pretexts.simclr import SimCLRPretext, nt_xent_logits, pair_views, positive_indices
from ssl_dr.pretexts.store import pretext_description, pretext_key
from ssl_dr.train import train
from tests.conftest import TINY_SYNTHETIC, compose_cfg

# --- jigsaw: the permutation set ---------------------------------------------------------------------------


def test_permutation_set_is_valid_far_apart_and_fixed():
    perms = maximal_hamming_permutations(9, 24, 0)
    assert perms.shape == (24, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 24
    distances = (perms[:, None] != perms[None]).sum(-1)[~np.eye(24, dtype=bool)]
    assert distances.min() >= 7  # greedy maximal Hamming: no two answers a few swaps apart
    # pinned values: the same set in every process, rank and run (also catches a numpy stream change,
    # which would silently change the task behind an unchanged pretext store key)
    assert perms[:2].tolist() == [[7, 5, 1, 6, 2, 3, 8, 0, 4], [5, 0, 7, 3, 4, 8, 6, 2, 1]]
    assert np.array_equal(maximal_hamming_permutations.__wrapped__(9, 24, 0), perms)  # not just the cache
    assert not np.array_equal(maximal_hamming_permutations(9, 24, 1), perms)
    every = maximal_hamming_permutations(4, 24, 0)  # grid 2: all 4! orders
    assert sorted(map(tuple, every.tolist())) == list(itertools.permutations(range(4)))


def test_too_many_permutations_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"pretext.module.num_permutations=25 exceeds the 24"):
        maximal_hamming_permutations(4, 25, 0)


# --- jigsaw: the puzzle batch -------------------------------------------------------------------------------


def _cells(image: torch.Tensor, grid: int, cell: int) -> list[torch.Tensor]:
    """Row-major cells of one (C, H, W) image."""
    return [image[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] for r in range(grid) for c in range(grid)]


@pytest.mark.parametrize("size,grid,gap", [(32, 3, 0.1), (32, 2, 0.2), (13, 3, 0.0)])
def test_jigsaw_cell_j_holds_input_cell_perm_j(size, grid, gap):
    images = torch.arange(4 * 2 * size * size, dtype=torch.float32).reshape(4, 2, size, size) + 1  # no zeros
    perms = torch.from_numpy(maximal_hamming_permutations(grid * grid, 6, 0).copy())
    labels = torch.tensor([0, 5, 3, 5])
    out = jigsaw_batch(images, perms, labels, grid, gap)
    cell, border = cell_geometry(size, grid, gap)
    assert out.shape == images.shape
    inner = (slice(None), slice(border, cell - border), slice(border, cell - border))
    for i, label in enumerate(labels.tolist()):
        src, dst = _cells(images[i], grid, cell), _cells(out[i], grid, cell)
        for j in range(grid * grid):
            assert torch.equal(dst[j][inner], src[perms[label][j]][inner]), (i, j)
            blank = torch.ones_like(dst[j], dtype=torch.bool)
            blank[inner] = False
            assert (dst[j][blank] == 0).all()  # the gap hides pixel continuity across cuts
        assert (out[i, :, grid * cell:, :] == 0).all() and (out[i, :, :, grid * cell:] == 0).all()  # leftover


def test_central_crop_takes_the_middle_and_keeps_the_size():
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    assert central_crop(images, 1.0) is images
    cropped = central_crop(images, 0.6)  # the middle 6x6, resized back to 10x10
    assert cropped.shape == images.shape
    expected = F.interpolate(images[..., 2:8, 2:8], size=(10, 10), mode="bilinear", align_corners=False)
    assert torch.equal(cropped, expected)
    outside_changed = images.clone()
    outside_changed[..., :2, :] = outside_changed[..., :, 8:] = -1e6
    assert torch.equal(central_crop(outside_changed, 0.6), cropped)  # nothing from outside the middle


def test_jigsaw_grid_too_big_for_the_image_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"pretext.module.grid=3 with pretext.module.gap=0.2 .* data.image_size"):
        cell_geometry(16, 3, 0.2)
    cfg = compose_cfg(tmp_path, ["arm=jigsaw", "data.image_size=32", "pretext.module.grid=10"])
    with pytest.raises(ConfigError, match=r"pretext.module.grid=10"):  # Hydra's wrapper removed
        build_pretext(cfg, Backbone("resnet18"))


def test_jigsaw_validation_puzzles_are_fixed_and_training_ones_drawn():
    module = JigsawPretext(Backbone("resnet18"), optimizer=torch.optim.SGD, image_size=32, grid=2,
                           num_permutations=12)
    module.eval()
    assert torch.equal(module._labels(8, 3), module._labels(8, 3))
    module.train()
    torch.manual_seed(0)
    first = module._labels(64, 3)
    assert not torch.equal(first, module._labels(64, 3)) and first.max() < 12


# --- SimCLR -------------------------------------------------------------------------------------------------


def test_pair_views_puts_each_positive_b_rows_away():
    views = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 1, 2, 2)  # (B=3, 2 views, C, H, W)
    paired = pair_views(views)
    assert paired.shape == (6, 1, 2, 2)
    positives = positive_indices(3)
    assert positives.tolist() == [3, 4, 5, 0, 1, 2]
    for b in range(3):
        assert torch.equal(paired[b], views[b, 0]) and torch.equal(paired[b + 3], views[b, 1])
        assert torch.equal(paired[positives[b]], views[b, 1]) and torch.equal(paired[positives[b + 3]], views[b, 0])
    with pytest.raises(ValueError, match="pretext.transform=contrastive"):
        pair_views(torch.zeros(3, 1, 2, 2))


def test_nt_xent_matches_a_hand_computed_example():
    # rows 0,1 are first views, 2,3 second views; positives (0,2) and (1,3); lengths need not be 1
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, -1.0]]) * torch.tensor([[3.0], [1.0], [2.0], [0.5]])
    logits, targets = nt_xent_logits(z, temperature=0.5)
    assert targets.tolist() == [2, 3, 0, 1]
    assert torch.isinf(logits.diagonal()).all()
    # cosine/0.5 per row over the other three rows (self excluded), positive first in each numerator
    expected = [-math.log(math.exp(1.2) / (math.exp(1.2) + 2)),
                -math.log(math.exp(-2) / (1 + math.exp(1.6) + math.exp(-2))),
                -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6) + math.exp(-1.6))),
                -math.log(math.exp(-2) / (1 + math.exp(-2) + math.exp(-1.6)))]
    assert F.cross_entropy(logits, targets).item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    # retrieval accuracy: only row 0 ranks its positive first
    assert (logits.argmax(1) == targets).tolist() == [True, False, False, False]


def test_simclr_temperature_must_be_positive():
    with pytest.raises(ConfigError, match="pretext.module.temperature=0"):
        SimCLRPretext(Backbone("resnet18"), optimizer=torch.optim.SGD, temperature=0)


def test_contrastive_views_two_different_views_fixed_on_held_out_images():
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    make = lambda: build_contrastive_transform(32, (0.5,) * 3, (0.25,) * 3, ContrastiveAugment(), seed=1)  # noqa: E731
    train_views = ContrastiveViews(make(), seed=1)
    train_views.set_random_seed(7)
    pair = train_views(image=pixels)["image"]
    assert pair.shape == (2, 3, 32, 32) and not torch.equal(pair[0], pair[1])
    train_views.set_random_seed(7)
    assert torch.equal(train_views(image=pixels)["image"], pair)  # FundusDataset's per-item seeding works
    held_out = ContrastiveViews(make(), seed=1, fixed=True)
    first = held_out(image=pixels)["image"]
    held_out(image=pixels[::-1].copy())
    assert torch.equal(held_out(image=pixels)["image"], first)  # same pair every epoch, whatever came before


def test_pretext_transform_must_exist_and_fit_the_module(tmp_path):
    with pytest.raises(ConfigError, match=r"pretext.transform='views' is not one of"):
        build_pretext(compose_cfg(tmp_path, ["arm=simclr", "pretext.transform=views"]), Backbone("resnet18"))
    with pytest.raises(ConfigError, match=r"SimCLRPretext, which needs pretext.transform='contrastive'"):
        build_pretext(compose_cfg(tmp_path, ["arm=simclr", "pretext.transform=pretext"]), Backbone("resnet18"))


# --- config: arms choose their pretext; store keys differ ------------------------------------------------


@pytest.mark.parametrize("override,arm,pretext", [
    ("arm=rotation", "rotation", "rotation"), ("arm=jigsaw", "jigsaw", "jigsaw"), ("arm=simclr", "simclr", "simclr"),
    ("experiment=rotation", "rotation", "rotation"), ("experiment=jigsaw", "jigsaw", "jigsaw"),
    ("experiment=simclr", "simclr", "simclr"), ("arm=baseline", "baseline", "rotation"),
])
def test_arm_chooses_its_pretext(override, arm, pretext, tmp_path):
    cfg = compose_cfg(tmp_path, [override])
    assert (cfg.arm, cfg.pretext.name) == (arm, pretext)
    assert cfg.init == ("random" if arm == "baseline" else "pretext")


@pytest.mark.e2e
def test_sweep_over_arms_composes_each_arm_with_its_pretext(tmp_path):
    """A real ``-m arm=...`` multirun: Hydra writes each job's config, then the job stops at once on an
    out-of-range fold (only the composition is under test here)."""
    result = subprocess.run([sys.executable, "-m", "ssl_dr.train", "-m", "arm=rotation,jigsaw,simclr,baseline",
                             f"paths.root_dir={tmp_path}", "logger=csv", "data.fold=7", *TINY_SYNTHETIC],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(tmp_path.glob("outputs/sweep/multiruns/*/*/.hydra/config.yaml"))
    configs = [yaml.safe_load(p.read_text()) for p in jobs]
    assert [(c["arm"], c["pretext"]["name"]) for c in configs] == [
        ("rotation", "rotation"), ("jigsaw", "jigsaw"), ("simclr", "simclr"), ("baseline", "rotation")]


def test_store_key_differs_between_pretexts(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    pool = [Record("a", image, None)]
    keys = {name: pretext_key(pretext_description(compose_cfg(tmp_path, [f"arm={name}"]), pool))
            for name in ("rotation", "jigsaw", "simclr")}
    assert len(set(keys.values())) == 3
    other_grid = compose_cfg(tmp_path, ["arm=jigsaw", "pretext.module.grid=2"])
    assert pretext_key(pretext_description(other_grid, pool)) != keys["jigsaw"]


# --- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arm", ["jigsaw", "simclr"])
def test_tiny_run_through_the_real_config(arm, tiny_cfg):
    cfg = tiny_cfg(f"experiment={arm}", run=arm)
    metrics = train(cfg)
    saved = json.loads((Path(metrics["output_dir"]) / "metrics.json").read_text())
    assert saved["arm"] == arm and saved["pretext/reused"] is False
    assert math.isfinite(saved["pretext/val_acc"]) and 0.0 <= saved["pretext/val_acc"] <= 1.0
    assert math.isfinite(saved["pretext/val_loss"]) and math.isfinite(saved["test/qwk"])
    summary = json.loads((Path(cfg.paths.cache_dir) / "pretext" / saved["pretext/key"] / "pretext.json").read_text())
    assert summary["description"]["pretext"]["name"] == arm
