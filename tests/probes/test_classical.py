"""The classical reference features, checked by hand on images whose histograms are known."""

from __future__ import annotations

import cv2
import numpy as np

from ssl_dr.probes.classical import (
    CLASSICAL_DIM,
    EDGE_BINS,
    EDGE_MAX,
    HIST_BINS,
    THUMBNAIL,
    classical_features,
    extract_classical,
)
from ssl_dr.probes.features import extract_features
from tests.probes.test_features import backbone

SIDE = 64
COLOUR = (200, 100, 50)


def disc(colour=COLOUR) -> np.ndarray:
    """A masked fundus as the cache stores it: a constant disc, black outside."""
    image = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    cv2.circle(image, (SIDE // 2, SIDE // 2), 24, colour, thickness=-1)
    return image


def parts(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hist, rest = features[:3 * HIST_BINS].reshape(3, HIST_BINS), features[3 * HIST_BINS:]
    return hist, rest[:THUMBNAIL ** 2].reshape(THUMBNAIL, THUMBNAIL), rest[THUMBNAIL ** 2:]


def test_a_constant_disc_fills_one_bin_per_channel_and_has_no_edges_inside():
    features = classical_features(disc())
    assert features.shape == (CLASSICAL_DIM,) and features.dtype == np.float32
    hist, thumb, edges = parts(features)
    expected = np.zeros((3, HIST_BINS))
    for channel, value in enumerate(COLOUR):  # the black surround is not counted: each channel is one bin, all FOV
        expected[channel, value // (256 // HIST_BINS)] = 1
    np.testing.assert_array_equal(hist, expected)
    assert thumb[THUMBNAIL // 2, THUMBNAIL // 2] == np.float32(100 / 255) and thumb[0, 0] == 0
    np.testing.assert_array_equal(edges, np.eye(EDGE_BINS)[0])  # the disc's rim against black is left out


def test_a_green_ramp_lands_in_the_bin_of_its_sobel_magnitude():
    image = disc()
    slope = 2  # grey levels per pixel: cv2's 3x3 Sobel gives (1 + 2 + 1) * 2 * slope = 8 * slope
    ramp = (40 + slope * np.arange(SIDE)).astype(np.uint8)
    image[..., 1] = np.where(image[..., 0] > 0, ramp[None, :], 0)
    _, _, edges = parts(classical_features(image))
    np.testing.assert_array_equal(edges, np.eye(EDGE_BINS)[int(8 * slope * EDGE_BINS / EDGE_MAX)])


def test_dark_values_outside_the_field_of_view_change_nothing():
    clean = disc()
    noisy = clean.copy()
    outside = clean.sum(axis=2) == 0
    noisy[outside] = np.random.default_rng(0).integers(0, 10, (outside.sum(), 3), dtype=np.uint8)  # JPEG-like
    assert (noisy != clean).any()
    np.testing.assert_array_equal(classical_features(noisy), classical_features(clean))


def test_classical_features_of_a_cache_are_stored_with_a_key_of_their_own(tiny_cache, tmp_path):
    cache, records = tiny_cache
    stored = extract_classical(cache, tmp_path)
    np.testing.assert_array_equal(stored.rows(records[:2]),
                                  np.stack([classical_features(cache.image(r.id_code)) for r in records[:2]]))
    assert extract_classical(cache, tmp_path).key == stored.key
    assert extract_features(backbone(0), cache, tmp_path).key != stored.key
