"""Deterministic synthetic fundus photographs: the project's built-in diabetic-retinopathy dataset.

Why it exists: the whole pipeline (rotation pre-training, few-label grading) must run and be tested
without the Kaggle APTOS 2019 download, so this module writes a folder in the APTOS layout
(``train.csv`` = ``id_code,diagnosis``, ``train_images/``, optional ``test.csv`` + ``test_images/``)
that the real-data reader consumes unchanged.

Why it looks the way it does: a CNN trained on it should learn for the right reasons.

* Orientation comes only from anatomy: the optic disc sits on the nasal side, the darker macula about
  2.5 disc diameters temporal to it and slightly lower, and the vessel arcades arch around the macula.
  Left and right eyes are mirrored. The field of view is a centred circle, so the border says nothing
  about rotation.
* Grades follow the international DR scale (0 none, 1 microaneurysms only, 2 moderate, 3 severe with
  haemorrhages in four quadrants / venous beading / cotton-wool spots, 4 proliferative). Lesion counts
  overlap between neighbouring grades and colour, illumination, blur and noise vary per image, so
  grading stays hard. All sizes scale with the image so lesions remain visible at 64-128 px.
* Each image gets its own random stream derived from ``(seed, split, index)``, so datasets are
  byte-identical for identical parameters whatever the generation order.

Command line: ``python -m ssl_dr.data.synthetic --root DIR [--num-labelled N ...]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ssl_dr.data.records import NUM_GRADES

GRADE_MIX: tuple[float, ...] = (0.49, 0.10, 0.27, 0.05, 0.08)
GRADE_NAMES = ("none", "mild", "moderate", "severe", "proliferative")
EYES = ("left", "right")
GENERATOR_VERSION = 1

_STREAM_LABELLED, _STREAM_UNLABELLED, _STREAM_MONTAGE, _STREAM_GRADES = 1, 2, 3, 4
_SEED_TAG = 0x5D12  # last seed word: SeedSequence treats trailing zeros as absent, a constant tag avoids that
_ALL_GRADES_FROM = 20  # from this many labelled images on, every grade with weight > 0 is present
_SHIFT = 4  # fractional bits for sub-pixel cv2 drawing
_SUPERSAMPLE = 3  # vessels are drawn at 3x and area-downsampled, giving sub-pixel widths
_STEP = 0.008  # vessel polyline step, in FOV diameters
_MIN_VESSEL_WIDTH = 0.004  # in FOV diameters

# How each lesion layer is composited: ("mul", per-channel factor) darkens the local colour,
# ("mix", RGB colour) blends towards a colour scaled by the local illumination. Order matters:
# intraretinal lesions lie under the vessels, cotton-wool spots / pre-retinal blood / dust over them.
_UNDER_VESSELS = {
    "drusen": ("mix", (238, 214, 130)),
    "red": ("mul", (0.50, 0.17, 0.20)),
    "exudate": ("mix", (255, 226, 115)),
    "pale": ("mix", (236, 200, 150)),
    "pigment": ("mul", (0.32, 0.26, 0.24)),
}
_OVER_VESSELS = {
    "cws": ("mix", (240, 236, 218)),
    "preretinal": ("mul", (0.52, 0.12, 0.14)),
    "dust": ("mul", (0.70, 0.74, 0.78)),
}
_LAYER_BLUR = {"cws": 0.012, "pale": 0.004, "dust": 0.02, "preretinal": 0.004}  # sigma in FOV diameters
_VEIN_FACTOR = np.array([0.58, 0.34, 0.48], np.float32)
_ARTERY_FACTOR = np.array([0.78, 0.56, 0.64], np.float32)


@dataclass(frozen=True)
class _Anatomy:
    """Where things are. The canonical frame has its origin at the disc centre, +x temporal, +y inferior
    and the FOV diameter as unit; ``frame`` maps it to pixel offsets (tilt and left/right mirroring)."""

    size: int
    centre: np.ndarray  # FOV centre (x, y) px
    radius: float  # FOV radius px
    disc: np.ndarray  # disc centre (x, y) px
    fovea: np.ndarray  # fovea (x, y) px
    fovea_can: np.ndarray  # fovea in the canonical frame
    centre_can: np.ndarray  # FOV centre in the canonical frame
    disc_diam: float  # canonical units
    frame: np.ndarray  # 2x2 linear map canonical -> px

    @property
    def diam(self) -> float:
        return 2.0 * self.radius

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        return self.disc + pts @ self.frame.T


@dataclass(frozen=True)
class _Vessel:
    points: np.ndarray  # (n, 2) canonical
    widths: np.ndarray  # (n,) canonical
    vein: bool
    arcade: bool = False  # a temporal arcade trunk (where cotton-wool spots and NVE sit)


@dataclass(frozen=True)
class _Look:
    """Per-image photographic variation (camera, pigmentation, focus, exposure)."""

    base: np.ndarray  # RGB of the retina at the illumination peak
    gain: float
    gamma: float
    blur: float  # Gaussian sigma in px
    noise: float  # Gaussian noise sigma in grey levels


# ----------------------------------------------------------------------------------------- rendering


def render_fundus(rng: np.random.Generator, grade: int, size: int, eye: str = "left") -> np.ndarray:
    """One RGB uint8 image ``(size, size, 3)`` of the given DR grade (0-4); ``eye`` in {"left","right"}.

    Anatomy and photographic look come from one child stream and lesions from another, so the same
    ``rng`` state rendered at two grades gives the same eye with different lesions (handy for tests).
    """
    if not isinstance(grade, (int, np.integer)) or not 0 <= grade < NUM_GRADES:
        raise ValueError(f"grade must be an integer in 0..{NUM_GRADES - 1}, got {grade!r}")
    if eye not in EYES:
        raise ValueError(f"eye must be one of {EYES}, got {eye!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    anat_rng, lesion_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=2))
    anat = _sample_anatomy(anat_rng, size, eye)
    look = _sample_look(anat_rng, size)
    vessels = _vessel_tree(anat_rng, anat)
    img, illum = _background(anat_rng, anat, look)
    _optic_disc(anat_rng, img, illum, anat)
    lesions, vessels = _lesions(lesion_rng, int(grade), anat, vessels)
    layers = _artefacts(anat_rng, anat) | lesions
    _composite(img, illum, layers, _UNDER_VESSELS, anat)
    _draw_vessels(img, anat, vessels)
    _composite(img, illum, layers, _OVER_VESSELS, anat)
    return _finish(anat_rng, img, anat, look)


def _sample_anatomy(rng: np.random.Generator, size: int, eye: str) -> _Anatomy:
    """Disc nasal, fovea ~2.5 disc diameters temporal and a little lower; small tilt and jitter."""
    centre = np.full(2, (size - 1) / 2.0)
    radius = size * rng.uniform(0.46, 0.485)
    tilt = np.deg2rad(rng.uniform(-4.0, 4.0))
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    mirror = 1.0 if eye == "left" else -1.0  # left eye: disc on the image's left, temporal = +x
    frame = 2.0 * radius * rot @ np.diag([mirror, 1.0])
    disc_diam = rng.uniform(0.11, 0.13)
    disc_from_centre = np.array([-rng.uniform(0.21, 0.25), -rng.uniform(0.0, 0.03)])
    disc = centre + frame @ disc_from_centre + rng.normal(0.0, 0.008 * 2 * radius, 2)
    fovea_can = np.array([2.5 * disc_diam * rng.uniform(0.93, 1.07), disc_diam * rng.uniform(0.35, 0.6)])
    centre_can = np.linalg.solve(frame, centre - disc)
    return _Anatomy(size, centre, radius, disc, disc + frame @ fovea_can, fovea_can, centre_can, disc_diam, frame)


def _sample_look(rng: np.random.Generator, size: int) -> _Look:
    """Fundus pigmentation and camera settings vary between patients and clinics, so must the images."""
    base = np.array([rng.uniform(185, 235), rng.uniform(68, 115), rng.uniform(22, 60)], np.float32)
    return _Look(
        base=base,
        gain=rng.uniform(0.75, 1.12),
        gamma=rng.uniform(0.85, 1.2),
        blur=rng.uniform(0.0, 0.6) * size / 128,
        noise=rng.uniform(1.0, 4.0),
    )


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, cached per size (read-only)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


def _dist2(size: int, point: np.ndarray) -> np.ndarray:
    """Squared distance (float32) of every pixel centre to ``point``."""
    xx, yy = _grid(size)
    return (xx - float(point[0])) ** 2 + (yy - float(point[1])) ** 2


def _background(rng: np.random.Generator, anat: _Anatomy, look: _Look) -> tuple[np.ndarray, np.ndarray]:
    """Orange-red retina: radial illumination fall-off from a slightly off-centre hot spot, a blotchy
    low-frequency choroidal texture and the darker macula/fovea. Returns (image, illumination)."""
    r2 = _dist2(anat.size, anat.centre + rng.normal(0.0, 0.03 * anat.diam, 2)) * (1.0 / anat.radius**2)
    k1, k2 = rng.uniform(0.2, 0.42), rng.uniform(0.05, 0.25)
    texture = cv2.resize(
        rng.standard_normal((5, 5), dtype=np.float32), (anat.size, anat.size), interpolation=cv2.INTER_CUBIC
    )
    illum = (1.0 - k1 * r2 - k2 * r2 * r2) * (1.0 + rng.uniform(0.03, 0.07) * texture)
    d2 = _dist2(anat.size, anat.fovea)
    dd_px = anat.disc_diam * anat.diam
    macula = rng.uniform(0.2, 0.32) * np.exp(d2 * (-0.5 / (0.55 * dd_px) ** 2))
    fovea = rng.uniform(0.08, 0.16) * np.exp(d2 * (-0.5 / (0.12 * dd_px) ** 2))
    img = (illum * (1.0 - macula - fovea))[..., None] * look.base
    return img, illum


def _optic_disc(rng: np.random.Generator, img: np.ndarray, illum: np.ndarray, anat: _Anatomy) -> None:
    """Bright yellow-white, slightly vertically oval disc with a brighter cup, offset temporally and a
    little superiorly (the inferior rim is the thickest, the ISNT rule: one more up/down cue)."""
    dd_px = anat.disc_diam * anat.diam
    angle = float(np.rad2deg(np.arctan2(anat.frame[1, 0], anat.frame[0, 0])))
    disc_col = np.array([255, rng.uniform(200, 230), rng.uniform(130, 175)], np.float32)
    cup_col = np.array([255, 248, rng.uniform(205, 235)], np.float32)
    cup_ratio = rng.uniform(0.3, 0.5)
    cup = anat.to_px(np.array([0.08, -0.05]) * anat.disc_diam)
    for centre, axes, colour, opacity, soft in (
        (anat.disc, (0.48 * dd_px, 0.53 * dd_px), disc_col, rng.uniform(0.8, 0.95), 0.05),
        (cup, (0.5 * cup_ratio * dd_px, 0.55 * cup_ratio * dd_px), cup_col, rng.uniform(0.6, 0.85), 0.1),
    ):
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.ellipse(mask, _fix(centre), _fix(axes), angle, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
        alpha = _blur(mask, soft * dd_px) * (opacity / 255)
        img += alpha[..., None] * ((0.8 + 0.2 * illum)[..., None] * colour - img)


def _grow(
    rng: np.random.Generator,
    anat: _Anatomy,
    starts: np.ndarray,
    headings: np.ndarray,
    lengths: np.ndarray,
    curvatures: np.ndarray,
    widths: np.ndarray,
    veins: np.ndarray,
    *,
    taper: float,
    wiggle: float,
    decay: float = np.inf,
    arcades: np.ndarray | None = None,
) -> list[tuple[_Vessel, np.ndarray]]:
    """Grow a batch of tapering vessels at once (one per row; batching keeps Python overhead low).

    Each is a smooth random walk in the canonical frame whose ``curvature`` (rad per FOV diameter) fades
    over arc length ``decay`` (arcades bend most near the disc); it stops where it would enter the
    avascular fovea or leave the field of view. Returns (vessel, segment headings) pairs."""
    k = len(starts)
    n = max(2, int(lengths.max() / _STEP))
    turns = curvatures[:, None] * (_STEP * np.exp(-np.arange(n) * _STEP / decay)) + rng.normal(0, wiggle, (k, n))
    heads = headings[:, None] + np.cumsum(turns, axis=1)
    pts = np.empty((k, n + 1, 2))
    pts[:, 0] = starts
    pts[:, 1:, 0] = starts[:, :1] + np.cumsum(_STEP * np.cos(heads), axis=1)
    pts[:, 1:, 1] = starts[:, 1:] + np.cumsum(_STEP * np.sin(heads), axis=1)
    planned = np.maximum(lengths / _STEP, 2.0)[:, None]
    steps = np.arange(n + 1)[None, :]
    bad = (((pts - anat.fovea_can) ** 2).sum(2) < (0.6 * anat.disc_diam) ** 2) | (steps > planned)
    bad |= ((pts - anat.centre_can) ** 2).sum(2) > 0.25
    stops = np.where(bad.any(axis=1), bad.argmax(axis=1), n + 1)
    w = np.maximum(widths[:, None] * (1.0 - (1.0 - taper) * np.minimum(steps / planned, 1.0)), _MIN_VESSEL_WIDTH)
    arcades = np.zeros(k, bool) if arcades is None else arcades
    return [
        (_Vessel(pts[i, :stop], w[i, :stop], bool(veins[i]), bool(arcades[i])), heads[i, : stop - 1])
        for i, stop in enumerate(stops)
        if stop >= 3
    ]


# (initial heading deg, total turn deg, length) of the main trunks in the canonical frame
_TRUNKS = np.array(
    [
        (-72.0, 80.0, 0.8),  # superior temporal arcade
        (74.0, -80.0, 0.8),  # inferior temporal arcade
        (-112.0, -45.0, 0.5),  # superior nasal
        (110.0, 45.0, 0.5),  # inferior nasal
    ]
)
_TRUNK_DECAY = 0.25  # FOV diameters over which a trunk's bend fades


def _vessel_tree(rng: np.random.Generator, anat: _Anatomy) -> list[_Vessel]:
    """Vein/artery pairs for the four arcades plus thin macular twigs, with two generations of side
    branches; veins are wider than arteries and the inferotemporal vein is the widest, as in real eyes."""
    veins = np.repeat([True, False], 4)
    heading, turn, length = np.tile(_TRUNKS, (2, 1)).T
    heading = np.deg2rad(heading + rng.normal(0, 5, 8) - np.where(veins, 0.0, np.sign(heading) * 12))
    width = np.where(veins, 0.014, 0.0105) * np.tile([1.0, 1.1, 0.8, 0.8], 2)
    starts = 0.12 * anat.disc_diam * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    trunks = _grow(
        rng,
        anat,
        starts,
        heading,
        length * rng.uniform(0.9, 1.1, 8),
        np.deg2rad(turn * rng.uniform(0.8, 1.2, 8)) / _TRUNK_DECAY,
        width,
        veins,
        taper=0.45,
        wiggle=0.03,
        decay=_TRUNK_DECAY,
        arcades=np.tile([True, True, False, False], 2),
    )
    branches = _branch(rng, anat, trunks, (0.1, 0.18), (0.1, 0.25), keep=1.0)
    twigs_side = np.array([-1.0, 1.0])
    twig_heading = np.deg2rad(twigs_side * rng.uniform(8, 25, 2))
    twigs = _grow(
        rng,
        anat,
        np.zeros((2, 2)),
        twig_heading,
        np.full(2, 0.2),
        twigs_side * np.deg2rad(60),
        np.full(2, 0.006),
        twigs_side > 0,
        taper=0.6,
        wiggle=0.05,
    )
    return [v for v, _ in trunks + branches + _branch(rng, anat, branches, (0.05, 0.09), (0.04, 0.1), keep=0.6) + twigs]


def _branch(
    rng: np.random.Generator,
    anat: _Anatomy,
    parents: list[tuple[_Vessel, np.ndarray]],
    spacing: tuple[float, float],
    length: tuple[float, float],
    keep: float,
) -> list[tuple[_Vessel, np.ndarray]]:
    """Side branches at regular-ish intervals along each parent, alternating sides (a fraction ``keep``
    of the sites sprouts), leaving at 35-70 degrees with 55-80 % of the parent's width."""
    starts, headings, widths, veins = [], [], [], []
    for parent, heads in parents:
        step = max(3, int(rng.uniform(*spacing) / _STEP))
        idx = np.arange(int(rng.integers(step // 2, step + 1)), len(heads) - 2, step)
        idx = idx[rng.random(len(idx)) < keep]
        sides = np.where(np.arange(len(idx)) % 2 == 0, 1.0, -1.0) * (1.0 if rng.random() < 0.5 else -1.0)
        starts.append(parent.points[idx])
        headings.append(heads[idx] + sides * np.deg2rad(rng.uniform(35, 70, len(idx))))
        widths.append(parent.widths[idx] * rng.uniform(0.55, 0.8, len(idx)))
        veins.append(np.full(len(idx), parent.vein))
    k = sum(len(h) for h in headings)
    if k == 0:
        return []
    return _grow(
        rng,
        anat,
        np.concatenate(starts),
        np.concatenate(headings),
        rng.uniform(*length, k),
        np.deg2rad(rng.uniform(-80, 80, k)),
        np.concatenate(widths),
        np.concatenate(veins),
        taper=0.5,
        wiggle=0.05,
    )


def _draw_vessels(img: np.ndarray, anat: _Anatomy, vessels: Sequence[_Vessel]) -> None:
    """Vessels darken the retina multiplicatively (veins darker and wider than arteries). All segments
    of one kind and thickness go to cv2 in one call, drawn at 3x (cheap LINE_8) and area-downsampled,
    which anti-aliases and gives sub-pixel widths."""
    big = anat.size * _SUPERSAMPLE
    pts = (anat.to_px(np.concatenate([v.points for v in vessels])) + 0.5) * _SUPERSAMPLE - 0.5
    widths = np.concatenate([v.widths for v in vessels])
    owner = np.repeat(np.arange(len(vessels)), [len(v.widths) for v in vessels])
    inner = owner[:-1] == owner[1:]  # segments joining consecutive points of the same vessel
    segs = _fix(np.stack([pts[:-1], pts[1:]], axis=1)[inner])
    thick = np.maximum(1, np.rint(0.5 * (widths[:-1] + widths[1:])[inner] * anat.diam * _SUPERSAMPLE))
    is_vein = np.array([v.vein for v in vessels])[owner[:-1][inner]]
    for vein, factor in ((True, _VEIN_FACTOR), (False, _ARTERY_FACTOR)):
        mask = np.zeros((big, big), np.uint8)
        for t in np.unique(thick[is_vein == vein]):
            cv2.polylines(mask, segs[(thick == t) & (is_vein == vein)], False, 255, int(t), cv2.LINE_8, _SHIFT)
        small = cv2.resize(mask, (anat.size, anat.size), interpolation=cv2.INTER_AREA)
        alpha = _blur(small, 0.3 * anat.size / 128) * (0.9 / 255)
        img *= 1.0 - alpha[..., None] * (1.0 - factor)


# ------------------------------------------------------------------------------------------- lesions


def _lesions(
    rng: np.random.Generator, grade: int, anat: _Anatomy, vessels: list[_Vessel]
) -> tuple[dict[str, np.ndarray], list[_Vessel]]:
    """The grade's lesion layers and the vessel list (beaded / with new vessels). One per-image
    visibility factor fades all lesions together (early, faint disease or a poor photograph)."""
    visibility = rng.uniform(0.6, 1.0)
    layers: dict[str, np.ndarray] = {}
    vessels = _grade_lesions(rng, grade, layers, anat, vessels)
    return {name: (mask * visibility).astype(np.uint8) for name, mask in layers.items()}, vessels


def _grade_lesions(
    rng: np.random.Generator, grade: int, layers: dict[str, np.ndarray], anat: _Anatomy, vessels: list[_Vessel]
) -> list[_Vessel]:
    """Draw the grade's lesions into ``layers``. Counts are random with overlapping ranges between
    neighbouring grades; grade 4 adds proliferative signs on top of a moderate-or-severe background."""
    if grade == 0:
        return vessels
    if grade == 1:
        _lesions_microaneurysms(rng, layers, anat, 1 + rng.poisson(2.0))
        return vessels
    severe = grade == 3 or (grade == 4 and rng.random() < 0.5)
    _lesions_microaneurysms(rng, layers, anat, (5 + rng.poisson(8.0)) if severe else (2 + rng.poisson(5.0)))
    _lesions_haemorrhages(
        rng, layers, anat, (5 + rng.poisson(7.0)) if severe else (1 + rng.poisson(3.0)), all_quadrants=severe
    )
    if rng.random() < (0.7 if severe else 0.6):
        _lesions_exudates(rng, layers, anat, 1 + int(rng.random() < 0.35))
    _lesions_cotton_wool(rng, layers, anat, vessels, rng.poisson(2.0) if severe else rng.poisson(0.4))
    if severe and rng.random() < 0.6:
        vessels = _venous_beading(rng, vessels)
    if grade == 4:
        vessels = _lesions_proliferative(rng, layers, anat, vessels)
    return vessels


def _layer(layers: dict[str, np.ndarray], name: str, size: int) -> np.ndarray:
    if name not in layers:
        layers[name] = np.zeros((size, size), np.uint8)
    return layers[name]


def _place(anat: _Anatomy, pts: np.ndarray) -> np.ndarray:
    """Pull points inside the field of view and push them off the optic disc."""
    off = pts - anat.centre
    dist = np.maximum(np.linalg.norm(off, axis=1, keepdims=True), 1e-6)
    pts = anat.centre + off * np.minimum(1.0, 0.9 * anat.radius / dist)
    off = pts - anat.disc
    dist = np.maximum(np.linalg.norm(off, axis=1, keepdims=True), 1e-6)
    keep_out = 0.75 * anat.disc_diam * anat.diam
    return anat.disc + off * np.maximum(1.0, keep_out / dist)


def _scatter(
    rng: np.random.Generator, anat: _Anatomy, n: int, r_min: float, r_max: float, quadrants: bool = False
) -> np.ndarray:
    """``n`` points around the fovea, uniform in area between radii (FOV diameters); with
    ``quadrants`` the angles are stratified so all four quadrants get lesions."""
    if quadrants:
        angles = (np.arange(n) % 4 + rng.random(n)) * (np.pi / 2)
    else:
        angles = rng.uniform(0, 2 * np.pi, n)
    radii = np.sqrt(rng.uniform(r_min**2, r_max**2, n)) * anat.diam
    return _place(anat, anat.fovea + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1))


def _dots(mask: np.ndarray, centres: np.ndarray, radii: np.ndarray, values: np.ndarray) -> None:
    for c, r, v in zip(centres, radii, values, strict=True):
        cv2.circle(mask, _fix(c), int(r * (1 << _SHIFT)), int(v), -1, cv2.LINE_AA, _SHIFT)


def _lesions_microaneurysms(rng: np.random.Generator, layers: dict[str, np.ndarray], anat: _Anatomy, n: int) -> None:
    """Tiny dark-red dots in the posterior pole, about 2-2.7 % of the FOV across."""
    pts = _scatter(rng, anat, n, 0.03, 0.33)
    radii = rng.uniform(0.0095, 0.0135, n) * anat.diam
    _dots(_layer(layers, "red", anat.size), pts, radii, rng.uniform(210, 255, n))


def _lesions_haemorrhages(
    rng: np.random.Generator, layers: dict[str, np.ndarray], anat: _Anatomy, n: int, all_quadrants: bool
) -> None:
    """Dot, blot (clustered circles) and flame (radial ellipses) haemorrhages."""
    mask = _layer(layers, "red", anat.size)
    pts = _scatter(rng, anat, n, 0.05, 0.42 if all_quadrants else 0.3, quadrants=all_quadrants)
    for p in pts:
        kind = rng.random()
        value = int(rng.uniform(200, 255))
        if kind < 0.4:  # dot
            _dots(mask, p[None], np.array([rng.uniform(0.013, 0.02) * anat.diam]), np.array([value]))
        elif kind < 0.8:  # blot
            k = int(rng.integers(2, 5))
            r = rng.uniform(0.016, 0.028) * anat.diam
            _dots(mask, p + rng.normal(0, 0.5 * r, (k, 2)), r * rng.uniform(0.6, 1.0, k), np.full(k, value))
        else:  # flame: elongated along the nerve fibres, i.e. radially from the disc
            direction = p - anat.disc
            angle = float(np.rad2deg(np.arctan2(direction[1], direction[0])))
            axes = np.array([rng.uniform(0.022, 0.04), rng.uniform(0.007, 0.012)]) * anat.diam
            cv2.ellipse(mask, _fix(p), _fix(axes), angle, 0, 360, value, -1, cv2.LINE_AA, _SHIFT)


def _lesions_exudates(rng: np.random.Generator, layers: dict[str, np.ndarray], anat: _Anatomy, clusters: int) -> None:
    """Clusters (sometimes partial rings) of small yellow hard exudates near the macula."""
    mask = _layer(layers, "exudate", anat.size)
    dd_px = anat.disc_diam * anat.diam
    for _ in range(clusters):
        angle = rng.uniform(0, 2 * np.pi)
        centre = anat.fovea + rng.uniform(0.4, 1.8) * dd_px * np.array([np.cos(angle), np.sin(angle)])
        n = 3 + rng.poisson(6.0)
        if rng.random() < 0.3:  # circinate: a partial ring around a leaking point
            theta = rng.uniform(0, 2 * np.pi) + rng.uniform(0, 1.5 * np.pi, n)
            ring = rng.uniform(0.04, 0.07) * anat.diam * rng.uniform(0.85, 1.15, n)
            pts = centre + ring[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        else:
            pts = centre + rng.normal(0, rng.uniform(0.02, 0.045) * anat.diam, (n, 2))
        radii = rng.uniform(0.008, 0.015, n) * anat.diam
        _dots(mask, _place(anat, pts), radii, rng.uniform(170, 255, n))


def _lesions_cotton_wool(
    rng: np.random.Generator, layers: dict[str, np.ndarray], anat: _Anatomy, vessels: list[_Vessel], n: int
) -> None:
    """Fluffy pale patches (blurred when composited) along the arcades / around the disc."""
    if n == 0:
        return
    mask = _layer(layers, "cws", anat.size)
    trunk_pts = np.vstack([v.points for v in vessels if v.arcade])
    pts = anat.to_px(trunk_pts[rng.integers(0, len(trunk_pts), n)]) + rng.normal(0, 0.03 * anat.diam, (n, 2))
    for p in _place(anat, pts):
        major = rng.uniform(0.026, 0.045) * anat.diam
        axes = np.array([major, major * rng.uniform(0.55, 0.9)])
        cv2.ellipse(
            mask, _fix(p), _fix(axes), rng.uniform(0, 180), 0, 360, int(rng.uniform(190, 255)), -1, cv2.LINE_AA, _SHIFT
        )


def _venous_beading(rng: np.random.Generator, vessels: list[_Vessel]) -> list[_Vessel]:
    """Irregular, sausage-like swelling of some larger veins."""
    out = []
    for v in vessels:
        if v.vein and v.widths[0] > 0.01 and rng.random() < 0.6:
            s = np.arange(len(v.widths)) * _STEP
            period = rng.uniform(0.03, 0.05)
            phase = rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.4, len(s)).cumsum() * 0.3
            bead = (0.5 + 0.5 * np.sin(2 * np.pi * s / period + phase)) ** 3
            onset = s > rng.uniform(0.05, 0.2)
            v = _Vessel(v.points, v.widths * (1 + rng.uniform(0.6, 1.0) * bead * onset), True, v.arcade)
        out.append(v)
    return out


def _lesions_proliferative(
    rng: np.random.Generator, layers: dict[str, np.ndarray], anat: _Anatomy, vessels: list[_Vessel]
) -> list[_Vessel]:
    """At least one of: new vessels (at the disc or along an arcade), a boat-shaped pre-retinal
    haemorrhage, or rings of laser scars."""
    signs = rng.random(3) < (0.7, 0.35, 0.35)
    if not signs.any():
        signs[rng.integers(3)] = True
    if signs[1]:
        _lesions_preretinal(rng, layers, anat)
    if signs[2]:
        _lesions_laser(rng, layers, anat)
    if signs[0]:
        vessels = vessels + _lesions_neovascular(rng, anat, vessels)
    return vessels


def _lesions_neovascular(rng: np.random.Generator, anat: _Anatomy, vessels: list[_Vessel]) -> list[_Vessel]:
    """Tufts of fine, tortuous new vessels at the disc (NVD) or on an arcade (NVE)."""
    arcades = [v.points for v in vessels if v.arcade]
    centres = []
    for _ in range(1 + rng.poisson(0.6)):
        if rng.random() < 0.5 or not arcades:
            centre = rng.normal(0, 0.3 * anat.disc_diam, 2)
        else:
            trunk = arcades[int(rng.integers(0, len(arcades)))]
            centre = trunk[int(rng.uniform(0.25, 0.8) * len(trunk))]
        centres.append(centre + rng.normal(0, 0.012, (int(rng.integers(8, 15)), 2)))
    starts = np.concatenate(centres)
    k = len(starts)
    grown = _grow(
        rng,
        anat,
        starts,
        rng.uniform(0, 2 * np.pi, k),
        rng.uniform(0.06, 0.14, k),
        np.zeros(k),
        rng.uniform(0.005, 0.008, k),
        np.ones(k, bool),
        taper=1.0,
        wiggle=0.6,
    )
    return [v for v, _ in grown]


def _lesions_preretinal(rng: np.random.Generator, layers: dict[str, np.ndarray], anat: _Anatomy) -> None:
    """A large dark-red blob with a flat (fluid-level) top: blood settled under gravity."""
    mask = _layer(layers, "preretinal", anat.size)
    angle = rng.uniform(0, 2 * np.pi)
    dd_px = anat.disc_diam * anat.diam
    centre = _place(anat, anat.fovea + rng.uniform(0.8, 2.4) * dd_px * np.array([[np.cos(angle), np.sin(angle)]]))[0]
    width = rng.uniform(0.12, 0.2) * anat.diam
    depth = width * rng.uniform(0.45, 0.7)
    tilt = rng.normal(0, 4)
    value = int(rng.uniform(220, 255))
    cv2.ellipse(mask, _fix(centre), _fix((0.5 * width, depth)), tilt, 0, 180, value, -1, cv2.LINE_AA, _SHIFT)
    cv2.ellipse(mask, _fix(centre), _fix((0.5 * width, 0.12 * depth)), tilt, 180, 360, value, -1, cv2.LINE_AA, _SHIFT)


def _lesions_laser(rng: np.random.Generator, layers: dict[str, np.ndarray], anat: _Anatomy) -> None:
    """Pan-retinal photocoagulation: a jittered lattice of pigmented spots with pale halos in the
    mid-periphery, sparing the macula and the disc."""
    spot = rng.uniform(0.012, 0.018) * anat.diam
    pitch = rng.uniform(2.4, 3.2) * 2 * spot
    ticks = np.arange(-anat.radius, anat.radius, pitch)
    gx, gy = np.meshgrid(ticks, ticks)
    gx += (np.arange(len(ticks)) % 2)[:, None] * (pitch / 2)  # staggered rows
    pts = anat.centre + np.stack([gx.ravel(), gy.ravel()], axis=1) + rng.normal(0, 0.2 * pitch, (gx.size, 2))
    ring = np.linalg.norm(pts - anat.centre, axis=1) / anat.diam
    dd_px = anat.disc_diam * anat.diam
    keep = (ring > rng.uniform(0.26, 0.32)) & (ring < 0.44) & (rng.random(len(pts)) < rng.uniform(0.6, 0.9))
    keep &= np.linalg.norm(pts - anat.fovea, axis=1) > 2.2 * dd_px
    keep &= np.linalg.norm(pts - anat.disc, axis=1) > 1.2 * dd_px
    pts = pts[keep]
    n = len(pts)
    _dots(_layer(layers, "pale", anat.size), pts, spot * rng.uniform(0.75, 1.25, n), rng.uniform(110, 190, n))
    _dots(
        _layer(layers, "pigment", anat.size),
        pts + rng.normal(0, 0.2 * spot, (n, 2)),
        spot * rng.uniform(0.3, 0.65, n),
        rng.uniform(150, 240, n),
    )


def _artefacts(rng: np.random.Generator, anat: _Anatomy) -> dict[str, np.ndarray]:
    """Grade-independent distractors: drusen (pale dots, not exudates) and blurry lens dust (dark
    but grey, not red), so "any spot" is not a shortcut to "diseased"."""
    layers: dict[str, np.ndarray] = {}
    if rng.random() < 0.25:
        n = int(rng.integers(2, 8))
        pts = _scatter(rng, anat, n, 0.02, 0.15)
        radii = rng.uniform(0.006, 0.011, n) * anat.diam
        _dots(_layer(layers, "drusen", anat.size), pts, radii, rng.uniform(60, 130, n))
    if rng.random() < 0.3:
        n = int(rng.integers(1, 4))
        pts = anat.centre + rng.uniform(-0.35, 0.35, (n, 2)) * anat.diam
        radii = rng.uniform(0.015, 0.035, n) * anat.diam
        _dots(_layer(layers, "dust", anat.size), pts, radii, rng.uniform(90, 200, n))
    return layers


# ----------------------------------------------------------------------------------------- compositing


def _composite(
    img: np.ndarray,
    illum: np.ndarray,
    layers: dict[str, np.ndarray],
    order: dict[str, tuple[str, tuple[float, ...]]],
    anat: _Anatomy,
) -> None:
    base_sigma = 0.25 * anat.size / 128
    for name, (mode, value) in order.items():
        if name not in layers:
            continue
        sigma = max(base_sigma, _LAYER_BLUR.get(name, 0.0) * anat.diam)
        alpha = _blur(layers[name], sigma)[..., None] * (1 / 255)
        colour = np.asarray(value, np.float32)
        if mode == "mul":
            img *= 1.0 - alpha * (1.0 - colour)
        else:
            img += alpha * (illum[..., None] * colour - img)


def _finish(rng: np.random.Generator, img: np.ndarray, anat: _Anatomy, look: _Look) -> np.ndarray:
    """Camera: exposure, defocus, sensor noise, gamma; black outside the circular field of view."""
    fov = np.clip(anat.radius + 0.5 - np.sqrt(_dist2(anat.size, anat.centre)), 0, 1)
    img *= look.gain
    if look.blur > 0.25:
        img = cv2.GaussianBlur(img, (0, 0), look.blur)
    img += rng.standard_normal(img.shape, dtype=np.float32) * look.noise
    img *= fov[..., None]
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** look.gamma + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(out, lut)


def _blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def _fix(values: Sequence[float] | np.ndarray) -> tuple[int, ...] | np.ndarray:
    """Fixed-point coordinates for cv2 drawing with ``shift=_SHIFT`` (tuple for a point/axes pair,
    int32 array for a polyline)."""
    arr = np.rint(np.asarray(values, np.float64) * (1 << _SHIFT)).astype(np.int32)
    return tuple(int(v) for v in arr) if arr.ndim == 1 else arr


def render_montage(seed: int = 0, size: int = 128) -> np.ndarray:
    """One image per grade 0..4 side by side with the grade written under each (for the README)."""
    tiles = []
    strip = max(14, size // 7)
    for grade in range(NUM_GRADES):
        tile = np.zeros((size + strip, size, 3), np.uint8)
        tile[:size] = _clearest_example(seed, grade, size, EYES[grade % 2])
        scale = strip / 40
        cv2.putText(
            tile,
            f"{grade} {GRADE_NAMES[grade]}",
            (max(2, size // 30), size + int(0.72 * strip)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            max(1, round(scale * 1.5)),
            cv2.LINE_AA,
        )
        tiles.append(tile)
    return np.hstack(tiles)


def _clearest_example(seed: int, grade: int, size: int, eye: str, candidates: int = 4) -> np.ndarray:
    """Of a few random examples, the one whose lesions change the most pixels (same eye rendered at grade
    0 as reference): a montage should show what a grade looks like, not its faintest case."""
    best, best_area = None, -1.0
    for k in range(candidates):
        key = [seed, _STREAM_MONTAGE, grade, k, _SEED_TAG]
        img = render_fundus(np.random.default_rng(key), grade, size, eye)
        healthy = render_fundus(np.random.default_rng(key), 0, size, eye)
        area = float(np.mean(np.abs(img.astype(np.int16) - healthy).sum(axis=2) > 30))
        if area > best_area:
            best, best_area = img, area
    return best


# ------------------------------------------------------------------------------------------- dataset


def write_synthetic_dataset(
    root: str | Path,
    num_labelled: int = 600,
    num_unlabelled: int = 200,
    image_size: int = 128,
    seed: int = 0,
    grade_mix: Sequence[float] = GRADE_MIX,
) -> Path:
    """Write the APTOS-layout folder at ``root`` once and return ``root``.

    A complete folder whose ``generator.json`` matches the parameters is reused as is; a folder with other
    parameters or incomplete content raises ``ValueError`` (never silently mixed or overwritten). The
    build happens in a hidden temporary sibling that is renamed into place at the end, so an interrupted
    run never leaves a half dataset that a later run would trust; if another process wins the rename
    race, its result is validated and ours discarded.
    """
    params = _params(num_labelled, num_unlabelled, image_size, seed, grade_mix)
    root = Path(root).expanduser()
    if root.exists() and not (root.is_dir() and next(root.iterdir(), None) is None):  # an empty folder is fine
        _check_existing(root, params)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _build(tmp, params)
        try:
            os.replace(tmp, root)  # atomic; also succeeds onto an empty directory (POSIX)
        except OSError:
            if not root.exists():
                raise  # not a lost race: a real error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    _check_existing(root, params)
    return root


def _params(num_labelled: int, num_unlabelled: int, image_size: int, seed: int, grade_mix: Sequence[float]) -> dict:
    """Validate the arguments; return them as the JSON-comparable record kept in ``generator.json``."""
    for name, value, low in (
        ("num_labelled", num_labelled, 1),
        ("num_unlabelled", num_unlabelled, 0),
        ("image_size", image_size, 32),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    mix = np.asarray(grade_mix, dtype=float)
    if mix.shape != (NUM_GRADES,) or not np.all(np.isfinite(mix)) or np.any(mix < 0) or mix.sum() <= 0:
        raise ValueError(
            f"grade_mix must be {NUM_GRADES} non-negative numbers with a positive sum (one weight "
            f"per grade 0-{NUM_GRADES - 1}), got {grade_mix!r}"
        )
    return {
        "generator": "ssl_dr.data.synthetic",
        "version": GENERATOR_VERSION,
        "num_labelled": int(num_labelled),
        "num_unlabelled": int(num_unlabelled),
        "image_size": int(image_size),
        "seed": int(seed),
        "grade_mix": [round(float(p), 6) for p in mix / mix.sum()],
    }


def assign_grades(n: int, grade_mix: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """``n`` grades in random order whose counts follow ``grade_mix`` as closely as integers allow
    (largest remainder), so even small sets have the intended mix. From 20 images on every grade with
    positive weight appears at least once."""
    mix = np.asarray(grade_mix, dtype=float) / np.sum(grade_mix)
    exact = mix * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact, kind="stable")[: n - counts.sum()]] += 1
    if n >= _ALL_GRADES_FROM:
        for grade in np.flatnonzero((counts == 0) & (mix > 0)):
            counts[np.argmax(counts)] -= 1
            counts[grade] += 1
    grades = np.repeat(np.arange(NUM_GRADES), counts)
    rng.shuffle(grades)
    return grades


def _split_grades(params: dict, stream: int, n: int) -> np.ndarray:
    return assign_grades(
        n, params["grade_mix"], np.random.default_rng([params["seed"], _STREAM_GRADES, stream, _SEED_TAG])
    )


def _build(folder: Path, params: dict) -> None:
    """Render and write everything; ``generator.json`` last, as the completion marker."""
    folder.mkdir()
    counts = {}
    for split, prefix, stream, n in _splits(params):
        grades = _split_grades(params, stream, n)
        ids = [f"{prefix}_{i:05d}" for i in range(n)]
        image_dir = folder / f"{split}_images"
        image_dir.mkdir()
        for i in _progress(range(n), f"synthetic {split} images"):
            rng = np.random.default_rng([params["seed"], stream, i, _SEED_TAG])
            eye = EYES[int(rng.integers(2))]
            _write_png(image_dir / f"{ids[i]}.png", render_fundus(rng, int(grades[i]), params["image_size"], eye))
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            if split == "train":
                writer.writerow(["id_code", "diagnosis"])
                writer.writerows(zip(ids, grades.tolist(), strict=True))
            else:
                writer.writerow(["id_code"])
                writer.writerows([i] for i in ids)
        counts[split] = np.bincount(grades, minlength=NUM_GRADES).tolist()
    _write_png(folder / "montage.png", render_montage(params["seed"], params["image_size"]))
    meta = {
        **params,
        "layout": "APTOS 2019: train.csv (id_code,diagnosis) + train_images/; "
        "test.csv (id_code) + test_images/ are unlabelled",
        "labelled_grade_counts": counts["train"],
    }
    (folder / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")


def _check_existing(root: Path, params: dict) -> None:
    """Raise ``ValueError`` unless ``root`` is a complete dataset generated with ``params``."""
    advice = "delete it or choose another root"
    try:
        meta = json.loads((root / "generator.json").read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{root} exists but is not a complete synthetic dataset (no readable generator.json); {advice}"
        )
    diff = {k: meta.get(k) for k in params if meta.get(k) != params[k]}
    if diff:
        wanted = {k: params[k] for k in diff}
        raise ValueError(f"{root} holds a synthetic dataset generated with {diff}, not {wanted}; {advice}")
    missing = _missing_files(root, params)
    if missing:
        raise ValueError(
            f"{root} is an incomplete synthetic dataset ({len(missing)} missing, e.g. {missing[0]}); {advice}"
        )


def _splits(params: dict) -> list[tuple[str, str, int, int]]:
    """(split, id prefix, random stream, count) of each split written."""
    splits = [("train", "syn", _STREAM_LABELLED, params["num_labelled"])]
    if params["num_unlabelled"]:
        splits.append(("test", "synu", _STREAM_UNLABELLED, params["num_unlabelled"]))
    return splits


def _missing_files(root: Path, params: dict) -> list[str]:
    splits = _splits(params)
    missing = [name for name in ("montage.png", *(f"{s[0]}.csv" for s in splits)) if not (root / name).is_file()]
    for split, prefix, _, n in splits:
        image_dir = root / f"{split}_images"
        present = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
        names = (f"{prefix}_{i:05d}.png" for i in range(n))
        missing += [f"{image_dir.name}/{name}" for name in names if name not in present]
    return missing


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def _progress(items: range, desc: str) -> Iterable[int]:
    """A tqdm bar when tqdm is installed (it comes with lightning) and stderr is a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, disable=None, leave=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ssl_dr.data.synthetic --root DIR``: write (or reuse) a synthetic dataset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="output folder (APTOS 2019 layout)")
    parser.add_argument("--num-labelled", type=int, default=600)
    parser.add_argument("--num-unlabelled", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = write_synthetic_dataset(args.root, args.num_labelled, args.num_unlabelled, args.image_size, args.seed)
    except ValueError as err:
        parser.error(str(err))
    counts = json.loads((root / "generator.json").read_text())["labelled_grade_counts"]
    print(
        f"synthetic dataset at {root}: {args.num_labelled} labelled + {args.num_unlabelled} unlabelled "
        f"{args.image_size}px images"
    )
    print("labelled grade counts: " + ", ".join(f"{g} ({GRADE_NAMES[g]}): {c}" for g, c in enumerate(counts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
