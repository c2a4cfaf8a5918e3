"""Sweeps: parallel jobs share one pretext; a failing job does not stop the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY


def _start(cwd: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ssl_dr.train", *TINY, *overrides], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_parallel_jobs_train_the_pretext_once(tmp_path):
    """Two processes need the same pretext at once: exactly one trains it, the other waits and reuses."""
    # the dataset is written first so both jobs start training at the same moment
    first = _start(tmp_path, "experiment=baseline", "trainer.max_epochs=1")
    assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    jobs = [_start(tmp_path, "experiment=rotation", f"data.label_fraction={f}") for f in (0.5, 1.0)]
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs[0][-2000:] + outputs[1][-2000:]
    metrics = [json.loads(p.read_text()) for p in (tmp_path / "outputs" / "rotation" / "runs").glob("*/metrics.json")]
    assert len(metrics) == 2
    assert sorted(m["pretext/reused"] for m in metrics) == [False, True]
    assert metrics[0]["pretext/key"] == metrics[1]["pretext/key"]
    assert len(list((tmp_path / "cache" / "pretext").iterdir())) == 1
