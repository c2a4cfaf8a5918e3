"""Where the configs are (``ssl_dr.config_dir``)."""

from __future__ import annotations

from pathlib import Path

from ssl_dr.train import CONFIG_DIR
from tests.launch.configs import ROOT


def test_config_dir_is_found_from_the_source_tree():
    """A checkout reads conf/ beside the package (an installed wheel reads ssl_dr/conf: tests/test_wheel.py and
    tests/test_docker.py)."""
    assert Path(CONFIG_DIR) == ROOT / "conf" and not (ROOT / "ssl_dr" / "conf").exists()
