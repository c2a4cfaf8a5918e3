"""The field-of-view mask (``data.preprocess.mask``): exactly rotation-invariant, clipped edges, rim notch
and halo outside it, the disc centred, Ben Graham inside it, the cache keyed by it, and inference
applying the checkpoint's mask (none for checkpoints from before it)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ssl_dr.data.cache import build_cache, cache_key
from ssl_dr.data.decode import read_rgb
from ssl_dr.data.fundus_preprocess import (
    MASK_MARGIN,
    MASKS,
    bright_mask,
    disc_centre,
    disc_square,
    fov_mask,
    fundus_box,
    preprocess,
)
from ssl_dr.data.records import Record
from ssl_dr.errors import DataError
from ssl_dr.inference import InferenceSpec, decoded_images, read_spec
from ssl_dr.train import train
from tests.camera_cue_images import camera_cue_fundus
from tests.conftest import TINY, compose_cfg

MASKED = [m for m in MASKS if m != "none"]


def clipped_disc(width: int = 200, top: float = 0.8, bottom: float = 0.8, notch: bool = True,
                 colour: tuple[int, int, int] = (200, 110, 50)) -> tuple[np.ndarray, tuple[float, float]]:
    """A uniform disc (radius 0.45 width) clipped flat ``top``/``bottom`` radii above/below its centre,
    with a bright marker sticking out of the rim at 1 o'clock; and the disc's true centre (x, y)."""
    radius = 0.45 * width
    image = np.zeros((width, width, 3), dtype=np.uint8)
    centre = (width // 2, width // 2)
    cv2.circle(image, centre, round(radius), colour, thickness=-1)
    image[:round(centre[1] - top * radius)] = 0
    image[round(centre[1] + bottom * radius) + 1:] = 0
    if notch:  # a wedge from 0.95 R out to 1.1 R, as in tests/camera_cue_images.py
        angle = np.deg2rad(60)
        corners = [(1.1, -0.05), (1.1, 0.05), (0.95, 0.07), (0.95, -0.07)]
        points = [(centre[0] + r * radius * np.cos(angle + d), centre[1] - r * radius * np.sin(angle + d))
                  for r, d in corners]
        cv2.fillPoly(image, [np.round(points).astype(np.int32)], (255, 255, 255))
    return image, centre


@pytest.mark.parametrize("size", [31, 32, 64])
@pytest.mark.parametrize("kind", MASKED)
def test_the_mask_is_the_same_under_every_quarter_turn(size, kind):
    rng = np.random.default_rng(size)
    for _ in range(5):
        image = camera_cue_fundus(rng)
        out = preprocess(image, size, ben_graham=False, mask=kind)
        keep = fov_mask(disc_square(image[fundus_box(image)], size), kind)
        assert 0.3 * size**2 < keep.sum() < 0.8 * size**2
        for k in (1, 2, 3):
            np.testing.assert_array_equal(keep, np.rot90(keep, k))
        assert not out[keep == 0].any()  # nothing outside the mask survives


@pytest.mark.parametrize("kind", MASKED)
def test_clipped_edges_and_the_notch_leave_no_trace_but_do_without_a_mask(kind):
    image, _ = clipped_disc()
    out = preprocess(image, 64, ben_graham=False, mask=kind)
    assert out[..., 2].max() <= 60  # the white notch (the disc is (200, 110, 50)) is gone entirely
    support = out.any(axis=2)
    for k in (1, 2, 3):  # a uniform disc: what is not black is exactly the mask, the same turned any way
        np.testing.assert_array_equal(support, np.rot90(support, k))
    unmasked = preprocess(image, 64, ben_graham=False, mask="none").any(axis=2)
    assert (unmasked != np.rot90(unmasked)).sum() > 100  # flat edges and notch: the control can fail
    assert not support[:8].any() and support[32].sum() > 40  # the notch and clipped top are black, rows kept


def test_a_circle_inscribed_in_the_square_would_keep_the_flat_edges():
    image, _ = clipped_disc(top=0.7, bottom=0.7, notch=False)
    square = disc_square(image[fundus_box(image)], 64)
    fov = bright_mask(square)
    yy, xx = np.mgrid[:64, :64] - 31.5
    naive = np.hypot(yy, xx) < 32 * (1 - MASK_MARGIN)
    assert (naive & ~fov).sum() > 50  # the padded square's circle reaches past the flat edges
    inscribed = fov_mask(square, "inscribed_circle").astype(bool)
    assert not (inscribed & ~fov).any()
    radius = np.hypot(yy, xx)[inscribed].max()
    assert 0.7 * 32 - 4 < radius < 0.7 * 32  # the largest circle inside the FOV, shrunk by the margin


def test_the_margin_also_applies_where_the_disc_touches_the_square():
    image, _ = clipped_disc(top=1.0, bottom=1.0, notch=False)
    square = disc_square(image[fundus_box(image)], 64)
    assert square[31, 0].any() and square[0, 31].any()  # the disc reaches all four edges
    margin = max(1, round(MASK_MARGIN * 32))
    for kind in MASKED:
        keep = fov_mask(square, kind)
        assert not (keep[:margin].any() or keep[-margin:].any() or keep[:, :margin].any())
        assert keep[31, margin + 1] and keep[margin + 1, 31]


def test_dark_spots_inside_the_disc_stay_inside_the_mask():
    image, _ = clipped_disc(notch=False)
    spotted = image.copy()
    cv2.circle(spotted, (100, 100), 20, (0, 0, 0), thickness=-1)  # a dark macula / haemorrhage
    cv2.circle(spotted, (140, 80), 6, (3, 3, 3), thickness=-1)
    plain_mask = fov_mask(disc_square(image[fundus_box(image)], 64))
    np.testing.assert_array_equal(fov_mask(disc_square(spotted[fundus_box(spotted)], 64)), plain_mask)


def test_a_photograph_with_nothing_bright_keeps_what_is_not_padding():
    dark = np.full((40, 60, 3), 6, dtype=np.uint8)  # 21 x 32 at 32 px: padded above and below
    for kind in MASKED:
        out = preprocess(dark, 32, ben_graham=False, mask=kind)
        assert out[16, 16].tolist() == [6, 6, 6] and out.any(axis=2).sum() > 150
        np.testing.assert_array_equal(out, np.rot90(out))  # the padding's edges are cut away too


def test_disc_centre_ignores_the_notch_and_uneven_clipping():
    image, (cx, cy) = clipped_disc(top=0.6, bottom=0.75)  # the notch sticks out 0.4 R past the top edge
    box = fundus_box(image)
    found = disc_centre(bright_mask(image))
    assert abs(found[0] - cx) < 0.6 and abs(found[1] - cy) < 0.6
    box_centre = (box[0].start + box[0].stop - 1) / 2
    assert abs(box_centre - cy) > 5  # the bounding box's centre, which pad_to_square uses, is far off
    for size in (32, 64):
        square = disc_square(image[box], size)
        x, y = disc_centre(bright_mask(square))
        assert abs(x - (size - 1) / 2) <= 0.75 and abs(y - (size - 1) / 2) <= 0.75


def test_ben_graham_inside_the_mask_sees_no_clipped_edge():
    """A uniform disc has nothing orientation-dependent; Ben Graham's blur of the black bars beyond its
    flat edges would put bright bands along them only: masked first, the result is the same turned."""
    image, _ = clipped_disc(top=0.75, bottom=0.75, notch=False)
    out = preprocess(image, 64, ben_graham=True, mask="rotation_invariant").astype(int)
    assert out.any(axis=2).sum() > 1500
    assert np.abs(out - np.rot90(out)).max() <= 2
    unmasked = preprocess(image, 64, ben_graham=True, mask="none").astype(int)
    assert np.abs(unmasked - np.rot90(unmasked)).max() > 50


def test_unknown_masks_are_refused_before_any_work(tmp_path):
    image, _ = clipped_disc()
    with pytest.raises(ValueError, match="square"):
        preprocess(image, 32, False, mask="square")
    path = tmp_path / "a.png"
    Image.fromarray(image).save(path)
    with pytest.raises(DataError, match=r"data.preprocess.mask='square' must be one of rotation_invariant"):
        build_cache([Record("a", path, None)], tmp_path / "cache", 32, False, num_workers=1, mask="square")


def test_the_cache_is_keyed_and_filled_by_the_mask(tmp_path):
    records = []
    for i, top in enumerate((0.7, 0.9)):
        path = tmp_path / f"eye{i}.png"
        Image.fromarray(clipped_disc(top=top, bottom=top)[0]).save(path)
        records.append(Record(path.stem, path, None))
    keys = {cache_key(records, 32, False, m) for m in MASKS}
    assert len(keys) == 3 and cache_key(records, 32, False) == cache_key(records, 32, False, "rotation_invariant")
    for mask in MASKS:
        cache = build_cache(records, tmp_path / "cache", 32, False, num_workers=1, mask=mask)
        assert cache.mask == mask == json.loads((cache.path / "index.json").read_text())["mask"]
        for rec in records:
            np.testing.assert_array_equal(cache.image(rec.id_code), preprocess(read_rgb(rec.path), 32, False, mask))


def spec(**preprocess_settings) -> InferenceSpec:
    return InferenceSpec.from_hparams({"backbone": "densenet121", "image_size": 32, "mean": [0.5] * 3,
                                       "std": [0.25] * 3, "preprocess": preprocess_settings})


def test_inference_applies_the_checkpoint_mask_and_none_for_old_checkpoints(tmp_path):
    assert spec(ben_graham=False).mask == "none"  # written before the mask existed: trained unmasked
    assert spec(ben_graham=False, mask="inscribed_circle").mask == "inscribed_circle"
    with pytest.raises(ValueError, match="square"):
        spec(ben_graham=False, mask="square")
    path = tmp_path / "eye.png"
    Image.fromarray(clipped_disc()[0]).save(path)
    for settings in ({"ben_graham": True}, {"ben_graham": True, "mask": "rotation_invariant"}):
        with decoded_images([Record("eye", path, None)], spec(**settings), num_workers=0) as decoded:
            expected = preprocess(read_rgb(path), 32, True, settings.get("mask", "none"))
            np.testing.assert_array_equal(decoded.pixels[0], expected)


@pytest.mark.slow  # a whole tiny run: ~15 s of CPU, 33 s on the shared 2-core machine
def test_a_training_run_caches_and_checkpoints_with_its_mask(tmp_path):
    """``train`` passes ``data.preprocess.mask`` to the cache, and the grader's checkpoint carries it, so
    ``predict`` applies what training saw."""
    cfg = compose_cfg(tmp_path, [*TINY, "experiment=baseline", "data.preprocess.mask=inscribed_circle"])
    metrics = train(cfg)
    entries = list((Path(cfg.paths.cache_dir) / "images").glob("*/index.json"))
    assert [json.loads(e.read_text())["mask"] for e in entries] == ["inscribed_circle"]
    assert read_spec(Path(metrics["output_dir"]) / "checkpoints" / "best.ckpt").mask == "inscribed_circle"
