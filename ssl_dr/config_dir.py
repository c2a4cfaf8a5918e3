"""Where the Hydra configs are: ``conf/`` beside the package in a checkout (editable install), or
``ssl_dr/conf`` inside an installed wheel (``setup.py`` ships the same folder there)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> str:
    """The folder holding ``train.yaml``: the checkout's ``conf/`` wins, so edits there take effect."""
    for candidate in (PACKAGE_DIR.parent / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no Hydra configs (train.yaml) in {PACKAGE_DIR.parent / 'conf'} or "
                            f"{PACKAGE_DIR / 'conf'}: reinstall ssl_dr (pip install .)")
