"""The test tiers run on pytest-xdist workers of one CPU thread each (pyproject's addopts, tests/conftest.py):
two such workers halve the tiers' time on 2 cores, while workers of two threads each oversubscribe them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")


def test_the_default_command_runs_the_tests_on_xdist_workers():
    addopts = shlex.split(toml.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
                          ["addopts"])
    assert addopts[addopts.index("-n") + 1] == "auto" and "--maxprocesses" in addopts


@pytest.mark.skipif(not os.environ.get("PYTEST_XDIST_WORKER"), reason="run in one process (-n 0)")
def test_a_worker_and_the_commands_it_starts_use_one_thread():
    assert torch.get_num_threads() == 1
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, timeout=120, check=True)
    assert child.stdout.strip() == "1"
