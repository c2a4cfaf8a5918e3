"""An installed wheel, not only a checkout: ``pip install .`` ships ``conf/`` as ``ssl_dr/conf`` and the
training command composes its configs from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.child_env import make_child_env, missing_build_tool

pytestmark = pytest.mark.e2e  # end to end: the `e2e` tier (.ci/run), not the default run

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_its_configs_and_composes_them_from_another_folder(tmp_path):
    missing = missing_build_tool()
    if missing:
        pytest.skip(missing)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(_clean_source(tmp_path / "src")),
                            "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("ssl_dr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"ssl_dr/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped and shipped == {name for name in names if name.startswith("ssl_dr/conf/")}

    # a fresh environment (the heavy dependencies come from the interpreter running pytest, tests/child_env.py;
    # nothing is downloaded); --ignore-installed: pip would otherwise see this checkout's editable ssl_dr's
    # metadata on the borrowed path and install nothing
    python = make_child_env(tmp_path / "env", with_pip=True)
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fresh = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on the path would win
    where = subprocess.run([python, "-c", "import ssl_dr.config_dir as c; print(c.__file__); print(c.config_dir())"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=120, env=fresh)
    module, configs = where.stdout.split()
    assert str(tmp_path / "env") in module and configs.endswith("site-packages/ssl_dr/conf")
    composed = subprocess.run([python, "-m", "ssl_dr.train", "--cfg", "job", "experiment=paper_cpu"], cwd=elsewhere,
                              capture_output=True, text=True, timeout=300, env=fresh)
    assert composed.returncode == 0, composed.stderr[-3000:]
    assert "sweep_name: paper_cpu" in composed.stdout and "keep_last_checkpoint: false" in composed.stdout
    derived = subprocess.run([python, "-m", "ssl_dr.train", "--cfg", "job", "experiment=jigsaw"], cwd=elsewhere,
                             capture_output=True, text=True, timeout=300, env=fresh)  # from ssl_dr/conf/pretext
    assert derived.returncode == 0, derived.stderr[-3000:]
    assert "arm: jigsaw" in derived.stdout and "name: jigsaw" in derived.stdout


def _clean_source(dest: Path) -> Path:
    """The checkout's package, configs and build files without its ``build/`` folder: setuptools builds in place and
    would ship what an earlier build left there (a config deleted since) beside the current ``conf/``."""
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for folder in ("ssl_dr", "conf"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
