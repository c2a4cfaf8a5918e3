"""Disease and distractors as masks: the lesions of each DR grade (microaneurysms, haemorrhages,
exudates, cotton-wool spots, venous beading, new vessels, pre-retinal blood, laser scars) and the
grade-independent artefacts, drawn into named uint8 layers that rendering composites."""

from __future__ import annotations

import cv2
import numpy as np

from ssl_dr.data.synthetic.anatomy import SHIFT, STEP, Anatomy, Vessel, fixed_point, grow


def draw_lesions(
    rng: np.random.Generator, grade: int, anat: Anatomy, vessels: list[Vessel]
) -> tuple[dict[str, np.ndarray], list[Vessel]]:
    """The grade's lesion layers and the vessel list (beaded / with new vessels). One per-image
    visibility factor fades all lesions together (early, faint disease or a poor photograph)."""
    visibility = rng.uniform(0.6, 1.0)
    layers: dict[str, np.ndarray] = {}
    vessels = _grade_lesions(rng, grade, layers, anat, vessels)
    return {name: (mask * visibility).astype(np.uint8) for name, mask in layers.items()}, vessels


def _grade_lesions(
    rng: np.random.Generator, grade: int, layers: dict[str, np.ndarray], anat: Anatomy, vessels: list[Vessel]
) -> list[Vessel]:
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


def _place(anat: Anatomy, pts: np.ndarray) -> np.ndarray:
    """Pull points inside the field of view and push them off the optic disc."""
    off = pts - anat.centre
    dist = np.maximum(np.linalg.norm(off, axis=1, keepdims=True), 1e-6)
    pts = anat.centre + off * np.minimum(1.0, 0.9 * anat.radius / dist)
    off = pts - anat.disc
    dist = np.maximum(np.linalg.norm(off, axis=1, keepdims=True), 1e-6)
    keep_out = 0.75 * anat.disc_diam * anat.diam
    return anat.disc + off * np.maximum(1.0, keep_out / dist)


def _scatter(
    rng: np.random.Generator, anat: Anatomy, n: int, r_min: float, r_max: float, quadrants: bool = False
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
        cv2.circle(mask, fixed_point(c), int(r * (1 << SHIFT)), int(v), -1, cv2.LINE_AA, SHIFT)


def _lesions_microaneurysms(rng: np.random.Generator, layers: dict[str, np.ndarray], anat: Anatomy, n: int) -> None:
    """Tiny dark-red dots in the posterior pole, about 2-2.7 % of the FOV across."""
    pts = _scatter(rng, anat, n, 0.03, 0.33)
    radii = rng.uniform(0.0095, 0.0135, n) * anat.diam
    _dots(_layer(layers, "red", anat.size), pts, radii, rng.uniform(210, 255, n))


def _lesions_haemorrhages(
    rng: np.random.Generator, layers: dict[str, np.ndarray], anat: Anatomy, n: int, all_quadrants: bool
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
            cv2.ellipse(mask, fixed_point(p), fixed_point(axes), angle, 0, 360, value, -1, cv2.LINE_AA, SHIFT)


def _lesions_exudates(rng: np.random.Generator, layers: dict[str, np.ndarray], anat: Anatomy, clusters: int) -> None:
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
    rng: np.random.Generator, layers: dict[str, np.ndarray], anat: Anatomy, vessels: list[Vessel], n: int
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
            mask, fixed_point(p), fixed_point(axes), rng.uniform(0, 180), 0, 360, int(rng.uniform(190, 255)), -1,
            cv2.LINE_AA, SHIFT
        )


def _venous_beading(rng: np.random.Generator, vessels: list[Vessel]) -> list[Vessel]:
    """Irregular, sausage-like swelling of some larger veins."""
    out = []
    for v in vessels:
        if v.vein and v.widths[0] > 0.01 and rng.random() < 0.6:
            s = np.arange(len(v.widths)) * STEP
            period = rng.uniform(0.03, 0.05)
            phase = rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.4, len(s)).cumsum() * 0.3
            bead = (0.5 + 0.5 * np.sin(2 * np.pi * s / period + phase)) ** 3
            onset = s > rng.uniform(0.05, 0.2)
            v = Vessel(v.points, v.widths * (1 + rng.uniform(0.6, 1.0) * bead * onset), True, v.arcade)
        out.append(v)
    return out


def _lesions_proliferative(
    rng: np.random.Generator, layers: dict[str, np.ndarray], anat: Anatomy, vessels: list[Vessel]
) -> list[Vessel]:
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


def _lesions_neovascular(rng: np.random.Generator, anat: Anatomy, vessels: list[Vessel]) -> list[Vessel]:
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
    grown = grow(
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


def _lesions_preretinal(rng: np.random.Generator, layers: dict[str, np.ndarray], anat: Anatomy) -> None:
    """A large dark-red blob with a flat (fluid-level) top: blood settled under gravity."""
    mask = _layer(layers, "preretinal", anat.size)
    angle = rng.uniform(0, 2 * np.pi)
    dd_px = anat.disc_diam * anat.diam
    centre = _place(anat, anat.fovea + rng.uniform(0.8, 2.4) * dd_px * np.array([[np.cos(angle), np.sin(angle)]]))[0]
    width = rng.uniform(0.12, 0.2) * anat.diam
    depth = width * rng.uniform(0.45, 0.7)
    tilt = rng.normal(0, 4)
    value = int(rng.uniform(220, 255))
    cv2.ellipse(mask, fixed_point(centre), fixed_point((0.5 * width, depth)), tilt, 0, 180, value, -1, cv2.LINE_AA,
                SHIFT)
    cv2.ellipse(mask, fixed_point(centre), fixed_point((0.5 * width, 0.12 * depth)), tilt, 180, 360, value, -1,
                cv2.LINE_AA, SHIFT)


def _lesions_laser(rng: np.random.Generator, layers: dict[str, np.ndarray], anat: Anatomy) -> None:
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


def draw_artefacts(rng: np.random.Generator, anat: Anatomy) -> dict[str, np.ndarray]:
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
