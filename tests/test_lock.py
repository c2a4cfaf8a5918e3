"""The locked environment: requirements/cpu.lock pins every requirement of pyproject.toml (test tools,
launcher plugins and the ONNX export's packages included) to one version inside its range, names no index or
host of the machine that made it, and is what the README's quick start, CI and the Docker image install."""

from __future__ import annotations

import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.test_dependencies import LAUNCHER_EXTRAS, PROJECT, extra

LOCK = REPO / "requirements" / "cpu.lock"
INSTALL = "pip install -r requirements/cpu.lock && pip install -e . --no-deps"


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, version = line.strip().partition("==")
            assert sep and re.fullmatch(r"[\w.!+-]+", version), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    """The core dependencies, the test tools, every launcher plugin (``launchers`` names the other extras) and the
    ONNX export's packages."""
    return [*map(Requirement, PROJECT["dependencies"]), *extra("test"), *extra("launchers"), *extra("onnx")]


def test_every_requirement_is_pinned_inside_its_range():
    pins = _pins()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in {LOCK.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"
    assert "ssl-dr" not in pins  # the package itself is installed from the checkout (--no-deps)


def test_the_lock_names_no_index_host_or_local_path():
    text = LOCK.read_text()
    for marker in ("--index-url", "--extra-index-url", "--find-links", "--trusted-host", "file://", "http://",
                   "https://", "/opt/"):
        assert marker not in text, marker


def test_the_header_says_how_to_regenerate_it():
    header = LOCK.read_text().split("\n\n")[0]
    command = re.search(r"#\s+(pip-compile .*)", header).group(1)
    # the launcher extras one by one: given the self-referencing `launchers`, pip-compile pins this checkout
    # itself as `ssl-dr @ file:///<path of the machine that ran it>`
    extras = ("test", *LAUNCHER_EXTRAS, "onnx")
    for option in (*(f"--extra={name}" for name in extras), "--no-emit-index-url", "--no-emit-find-links",
                   "--output-file=requirements/cpu.lock", "pyproject.toml"):
        assert option in command, option
    assert "--extra=launchers" not in command


def test_quick_start_ci_and_image_install_from_the_lock():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick_start, re.S)
    assert commands == [f"{INSTALL} && python -m ssl_dr.train experiment=rotation", f"{INSTALL} && pytest"]
    assert f"{INSTALL} && pytest" in (REPO / ".ci" / "run").read_text().splitlines()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY requirements/cpu.lock" in dockerfile and "pip install -r requirements/image.txt" in dockerfile
    assert "> requirements/image.txt" in dockerfile  # the lock less the torch stack (tests/test_docker.py)
