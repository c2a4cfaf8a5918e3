"""An installed wheel, not only a checkout: ``pip install .`` ships ``conf/`` as ``ssl_dr/conf`` and the
training command composes its configs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # end to end: the `e2e` tier (.ci/run), not the default run

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_its_configs_and_composes_them_from_another_folder(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("ssl_dr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"ssl_dr/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)

    # a fresh environment (the heavy dependencies come from this one; nothing is downloaded); --ignore-installed:
    # pip would otherwise see this checkout's editable ssl_dr through the system site-packages and install nothing
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(tmp_path / "env")
    python = tmp_path / "env" / "bin" / "python"
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
