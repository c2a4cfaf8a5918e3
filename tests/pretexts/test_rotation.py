"""The rotation batch holds every image in exactly the four rotations, labelled by quarter turns."""

import pytest
import torch

from ssl_dr.pretexts.rotation import NUM_ROTATIONS, rotate_batch


def test_rotate_batch_labels_match_rotations():
    images = torch.randn(3, 3, 8, 8)
    rotated, labels = rotate_batch(images)
    assert rotated.shape == (12, 3, 8, 8)
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3]
    assert torch.bincount(labels).tolist() == [3] * NUM_ROTATIONS
    for i in range(12):
        k, src = int(labels[i]), i % 3
        assert torch.equal(rotated[i], torch.rot90(images[src], k, dims=(-2, -1)))


def test_rotation_direction_is_counter_clockwise():
    image = torch.zeros(1, 1, 2, 2)
    image[0, 0, 0, 1] = 1.0  # top-right pixel
    rotated, _ = rotate_batch(image)
    assert rotated[1, 0, 0, 0] == 1.0  # a quarter turn CCW moves top-right to top-left
    assert rotated[2, 0, 1, 0] == 1.0  # half turn: bottom-left


def test_rotate_batch_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(1, 3, 8, 6))
