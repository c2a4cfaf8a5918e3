"""A tiny image cache of fundus-like discs (no real data) for the probe tests."""

from __future__ import annotations

import pytest

from ssl_dr.data.cache import build_cache
from tests.data.test_cache import fundus, records_for, write

SIZE = 32


@pytest.fixture
def tiny_cache(tmp_path):
    """8 textured discs of different colours, cached at 32 px: ``(cache, records)``."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [write(folder / f"eye{i}.png", fundus(48, 48, (24, 24), 20, seed=i)) for i in range(8)]
    records = records_for(paths)
    return build_cache(records, tmp_path / "cache" / "images", SIZE, ben_graham=False, num_workers=1), records
