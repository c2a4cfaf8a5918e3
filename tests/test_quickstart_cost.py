"""The quick-start cost benchmark times both checkouts in fresh folders and prints each run and the ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_prints_every_run_with_its_qwk_and_the_ratio_of_the_medians():
    """This checkout against itself, at a toy size: both give the same test QWK (same code, same seed); an override
    for this checkout only is applied to its runs and printed beside them."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quickstart_cost.py"), "--baseline", str(REPO),
                           "--this-override", "scale.channels_last=false", *TINY],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = re.findall(r"^run 1 (baseline|this)\s+([\d.]+) s  test/qwk (-?[\d.]+|nan)", done.stdout, re.M)
    assert [name for name, _, _ in runs] == ["baseline", "this"]
    assert runs[0][2] == runs[1][2]
    lines = [line for line in done.stdout.splitlines() if line.startswith("run 1 ")]
    assert lines[0].endswith(f"({REPO})") and lines[1].endswith(f"({REPO} scale.channels_last=false)")  # this only
    assert re.search(r"^median: baseline [\d.]+ s, this checkout [\d.]+ s; ratio [\d.]+ \([+-][\d.]+ %\)$",
                     done.stdout, re.M)
