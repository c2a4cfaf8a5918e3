"""The Docker image, without a Docker daemon (none runs here or on CI's machine, and base images cannot be
pulled): the Dockerfile's COPY instructions are replayed into an empty folder, the package is installed from
exactly those files into a fresh environment, and the image's own last build step (the config check) runs from
that install with the checkout off the path. The rest of the Dockerfile is read: base and CPU variant, compiler,
user, entry point."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from tests.child_env import borrowed_site_dirs, make_child_env, missing_build_tool
from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
CONFIG_CHECK = "python -m ssl_dr.train --cfg job experiment=paper trainer=gpu"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerignore() -> list[re.Pattern[str]]:
    """.dockerignore's patterns as Docker reads them: relative to the context root, ``*`` within one path
    element, ``**`` across any number of them."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not replayed here"
        glob = line.strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        patterns.append(re.compile(regex.replace(r"\?", "[^/]")))
    return patterns


def is_ignored(relative: PurePosixPath, patterns: list[re.Pattern[str]]) -> bool:
    """A path is left out of the build context when it or a folder above it matches a pattern."""
    return any(p.fullmatch(str(part)) for part in [relative, *list(relative.parents)[:-1]] for p in patterns)


def replay_copies(image_root: Path) -> list[str]:
    """Copy what every COPY puts into the image, from the checkout (less .dockerignore) to ``image_root``
    standing for ``/``; return the copied sources."""
    patterns, workdir, sources = dockerignore(), PurePosixPath("/"), []
    for op, args in instructions():
        if op == "WORKDIR":
            workdir = workdir / args.strip()
        if op != "COPY":
            continue
        *srcs, dest = [token for token in shlex.split(args) if not token.startswith("--")]
        target = image_root / (workdir / dest).relative_to("/")
        for src in srcs:
            origin = REPO / src
            assert origin.exists(), f"COPY {src}: not in the checkout"
            assert not is_ignored(PurePosixPath(src), patterns), f"COPY {src}: excluded by .dockerignore"
            into = target / origin.name if dest.endswith("/") or len(srcs) > 1 else target
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=lambda folder, names: [
                    n for n in names if is_ignored(PurePosixPath((Path(folder) / n).relative_to(REPO).as_posix()),
                                                   patterns)])
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)
            sources.append(src)
    return sources


def package_install() -> str:
    """The RUN that installs ssl_dr itself."""
    (run,) = [args for op, args in instructions() if op == "RUN" and re.search(r"pip install [^&]*\.\[", args)]
    return run


def test_the_package_installs_from_exactly_the_copied_files_and_the_config_check_passes(tmp_path):
    image = tmp_path / "image"
    sources = replay_copies(image)
    assert {"pyproject.toml", "setup.py", "README.md", "ssl_dr", "conf"} <= set(sources)
    app = image / "app"
    extras = re.search(r"\"?\.(\[[\w,]+\])\"?", package_install()).group(1)

    # the install step without downloads, into a fresh environment: the dependencies and the build backend come
    # from the interpreter running pytest (tests/child_env.py; no pip of its own, whose bundled old setuptools would
    # shadow them), --ignore-installed so that pip does not take this checkout's editable ssl_dr for the package
    missing = missing_build_tool()
    if missing:
        pytest.skip(missing)
    python = str(make_child_env(tmp_path / "env"))
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
                                "--no-build-isolation", "--ignore-installed", f"{app}{extras}"],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]

    # where the image runs: its WORKDIR /work (not /app, not the checkout), no PYTHONPATH, SSL_DR_ROOT=/work
    work = tmp_path / "work"
    work.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "SSL_DR_ROOT": str(work)}
    where = subprocess.run([python, "-c", "import ssl_dr.config_dir as c; print(c.__file__); print(c.config_dir())"],
                           cwd=work, capture_output=True, text=True, timeout=120, env=env)
    module, configs = where.stdout.split()
    assert module.startswith(str(tmp_path / "env")) and configs.endswith("site-packages/ssl_dr/conf"), where.stdout

    last_run = [args for op, args in instructions() if op == "RUN"][-1]
    command = shlex.split(last_run.replace("> /dev/null", ""))
    assert command[0] == "python"
    checked = subprocess.run([python, *command[1:]], cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "sweep_name: paper" in checked.stdout and "precision: bf16-mixed" in checked.stdout


def test_the_install_environment_borrows_the_packages_of_the_interpreter_running_pytest(tmp_path):
    """Not the base interpreter's (``system_site_packages``): inside a venv, the README's or CI's, those are an old
    setuptools without bdist_wheel, no torch and no Hydra. The child's own site-packages comes first, and the
    borrowed folders' .pth files do not run (this checkout's editable ssl_dr stays out)."""
    import hydra
    import setuptools

    python = make_child_env(tmp_path / "env")
    probe = ("import importlib.util, sys, hydra, setuptools; print(hydra.__file__); print(setuptools.__file__); "
             "print(importlib.util.find_spec('ssl_dr')); print(*sys.path, sep='\\n')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    hydra_file, setuptools_file, ssl_dr_spec, *path = out.stdout.splitlines()
    assert (hydra_file, setuptools_file, ssl_dr_spec) == (hydra.__file__, setuptools.__file__, "None")
    own = next(i for i, d in enumerate(path) if d.startswith(str(tmp_path / "env")) and d.endswith("site-packages"))
    assert all(path.index(d) > own for d in borrowed_site_dirs()), path


def test_copies_name_only_files_of_the_checkout_that_the_context_keeps(tmp_path):
    """The quick half of the replay (default tier): every COPY source exists and survives .dockerignore, and the
    package's build inputs are all copied before the install step."""
    sources = replay_copies(tmp_path)
    steps = instructions()
    install_at = steps.index(("RUN", package_install()))
    copied_before = {src for op, args in steps[:install_at] if op == "COPY"
                     for src in shlex.split(args)[:-1]}
    assert {"pyproject.toml", "setup.py", "README.md", "ssl_dr", "conf", "requirements/cpu.lock"} <= copied_before
    assert set(sources) >= copied_before and not (tmp_path / "app" / "ssl_dr" / "__pycache__").exists()
    ignored = {p.pattern for p in dockerignore()}
    assert {"outputs", "data", "cache", r"\.git", "wandb"} <= ignored


def test_the_image_installs_the_package_from_the_lock_on_a_gpu_or_cpu_base():
    steps = instructions()
    args = {args.split("=")[0]: args.split("=", 1)[1] for op, args in steps if op == "ARG" and "=" in args}
    froms = [args for op, args in steps if op == "FROM"]
    assert froms == ["${BASE}"]
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda12\.\d+-cudnn9-runtime", args["BASE"]), args["BASE"]
    assert "--build-arg BASE=python:3.11-slim" in DOCKERFILE.read_text()  # the CPU variant, documented
    runs = [args for op, args in steps if op == "RUN"]
    # a base without torch gets the lock's torch pins from the CPU wheel index; one with torch keeps its own
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    (torch_step,) = [run for run in runs if "TORCH_INDEX" in run]
    assert 'python -c "import torch"' in torch_step
    assert "grep -E '^(torch|torchvision)==' requirements/cpu.lock" in torch_step
    assert any(re.search(r"apt-get install [^&]*\bgcc\b", run) for run in runs)  # Triton's launcher build
    install = package_install()
    assert " -e " not in install and re.search(r"--constraint requirements/image\.txt \"\.\[launchers\]\"", install)
    name = re.search(r'^name = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert f"pip show {name}" in install


def test_the_image_runs_the_readme_command_as_a_non_root_user_and_checks_its_config_last():
    steps = instructions()
    entry = json.loads([args for op, args in steps if op == "ENTRYPOINT"][-1])
    module = re.search(r"python -m ([\w.]+)", (REPO / "README.md").read_text()).group(1)
    assert entry == ["python", "-m", module] == ["python", "-m", "ssl_dr.train"]
    user_at = max(i for i, (op, _) in enumerate(steps) if op == "USER")
    assert steps[user_at][1].split(":")[0] not in ("root", "0")
    last_run = max(i for i, (op, _) in enumerate(steps) if op == "RUN")
    assert steps[last_run][1] == f"{CONFIG_CHECK} > /dev/null" and last_run > user_at
    workdirs = [args for op, args in steps[:last_run] if op == "WORKDIR"]
    assert workdirs[-1] == "/work"  # the check runs where the image runs: the installed package, not /app
