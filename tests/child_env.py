"""A fresh virtual environment for install tests (tests/test_docker.py, tests/test_wheel.py) that borrows its
dependencies and build tools from the interpreter running pytest, so that nothing is downloaded.

``venv``'s ``system_site_packages=True`` is not that: it exposes the *base* interpreter's packages, which inside a
virtual environment (the README's ``python -m venv``, CI's ``.ci/venv``) are an old setuptools without
``bdist_wheel``, no torch and no Hydra. Here the child's own site-packages holds a ``.pth`` naming this
interpreter's site directories instead: what the child installs itself comes first; their ``.pth`` files (this
checkout's editable ssl_dr among them) are not run, as Python runs only those of its own site directories."""

from __future__ import annotations

import importlib.util
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path


def borrowed_site_dirs() -> list[str]:
    """This interpreter's site directories in its own order: a venv's (plus its base's when made with system site
    packages), or, outside any venv, the user's (when enabled) and the interpreter's."""
    user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    dirs = [*user, *site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def make_child_env(folder: Path, with_pip: bool = False) -> Path:
    """Create the environment at ``folder``; return its python."""
    venv.EnvBuilder(system_site_packages=False, with_pip=with_pip).create(folder)
    python = folder / "bin" / "python"
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    (Path(own) / "_borrowed_from_pytest.pth").write_text("".join(f"{d}\n" for d in borrowed_site_dirs()))
    return python


def missing_build_tool() -> str | None:
    """Why this interpreter cannot build ssl_dr's wheel without build isolation, or None when it can: setuptools
    with its ``bdist_wheel`` (built in since setuptools 70.1; older ones need the ``wheel`` package)."""
    if importlib.util.find_spec("setuptools") is None:
        return f"setuptools is not installed in {sys.executable} (pip install -r requirements/cpu.lock installs it)"
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None:
        return (f"{sys.executable}'s setuptools has no bdist_wheel and the wheel package is absent "
                "(pip install -r requirements/cpu.lock installs setuptools 84, which has it)")
    return None
