"""Chaos: a small sweep killed (SIGKILL, whole process group) at seeded random moments -- while the image cache
is built, while the pretext trains, while a fine-tune trains, between the last job and the report -- and
resumed with ``resume=last`` until it ends, reports exactly what an uninterrupted sweep reports."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY

# one seed: paper_cpu's default 3 seeds would triple the jobs (and the moments below name job 3 as the last)
SWEEP = ["arms=[rotation,baseline]", "data.label_fraction=0.5", "data.fold=0,1", "seed=42", "experiment=paper_cpu",
         *TINY]
SWEEPS = Path("outputs/paper_cpu/multiruns")
# (moment, files that show the sweep is there); the sweep is killed as soon as one appears (+ a random delay)
MOMENTS = [
    ("cache build", "cache/images/.*.tmp-*"),
    ("pretext", "cache/pretext/*/partial/last.ckpt"),
    ("fine-tune", f"{SWEEPS}/*/[123]/checkpoints/last.ckpt"),
    ("before the report", f"{SWEEPS}/*/3/metrics.json"),
]


def _command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "ssl_dr.train", *SWEEP, *extra]


def _report(cwd: Path) -> pd.DataFrame:
    (csv,) = cwd.glob(f"{SWEEPS}/*/report.csv")
    return pd.read_csv(csv)


@pytest.mark.slow
def test_a_sweep_killed_anywhere_and_resumed_reports_like_an_uninterrupted_one(tmp_path):
    calm, chaos = tmp_path / "calm", tmp_path / "chaos"
    calm.mkdir()
    chaos.mkdir()
    reference = subprocess.run(_command(), cwd=calm, capture_output=True, text=True, timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]

    rng = random.Random(0)
    kills, finished = [], False
    for attempt in range(len(MOMENTS) + 3):
        pending = [m for m in MOMENTS if m[0] not in {k for k, _ in kills}]
        process = subprocess.Popen(_command(*(["resume=last"] if attempt else [])), cwd=chaos,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 600
        while process.poll() is None and time.time() < deadline:
            hit = next(((name, pattern) for name, pattern in pending if list(chaos.glob(pattern))), None)
            if hit is not None:
                time.sleep(rng.uniform(0.0, 0.3))  # somewhere in that phase, not at its first byte
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    kills.append(hit)
                break
            time.sleep(0.005)
        process.wait(timeout=600)
        if process.returncode == 0:
            finished = True
            break
    assert finished, f"the sweep never finished; killed at {kills}"
    assert len(kills) >= 3, f"killed only at {kills}: the chaos missed its moments"
    assert len(list(chaos.glob(f"{SWEEPS}/*"))) == 1  # every resume continued the one sweep folder
    pd.testing.assert_frame_equal(_report(chaos), _report(calm))
    assert "Incomplete" not in next(chaos.glob(f"{SWEEPS}/*/report.md")).read_text()
