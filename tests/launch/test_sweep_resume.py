"""Resuming a killed sweep: the same command with ``resume=last`` continues it in its folder, keeps the
finished jobs as they are and runs the rest; ``ssl_dr.launch.folders`` chooses the folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ssl_dr.launch.folders import RESUMES_DIR, SWEEP_REPORT, SWEEP_SIZE, config_subdir, sweep_dir, sweep_finished
from tests.conftest import TINY

SWEEP = ("experiment=baseline", "data.fold=0,1,2,3", "sweep_name=resumed")


def _command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "ssl_dr.train", "-m", *TINY, *SWEEP, *overrides]


def _finished(sweeps: Path) -> list[Path]:
    return sorted(sweeps.glob("*/*/metrics.json"))


def _fake_sweep(root: Path, stamp: str, command: list[str], jobs: dict[str, bool], report: bool) -> Path:
    """A sweep folder as Hydra and ``ssl_dr.report`` leave it: multirun.yaml, job folders, report.md."""
    folder = root / stamp
    folder.mkdir(parents=True)
    (folder / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": command}}}))
    for job, done in jobs.items():
        (folder / job / ".hydra").mkdir(parents=True)
        if done:
            (folder / job / "metrics.json").write_text("{}")
    if report:
        (folder / SWEEP_REPORT).write_text("report\n")
    return folder


def test_resume_last_picks_the_newest_unfinished_sweep_of_the_same_command(tmp_path):
    command = ["data.fold=0,1", "experiment=baseline"]
    older = _fake_sweep(tmp_path, "2026-01-01_00-00-00_000001", command, {"0": True, "1": False}, report=False)
    _fake_sweep(tmp_path, "2026-01-02_00-00-00_000001", command, {"0": True, "1": True}, report=True)  # finished
    _fake_sweep(tmp_path, "2026-01-03_00-00-00_000001", ["data.fold=0,1"], {"0": False}, report=False)  # other
    assert sweep_finished(tmp_path / "2026-01-02_00-00-00_000001")
    chosen = sweep_dir("last", str(tmp_path), "now", [*command, "resume=last"], "RunMode.MULTIRUN")
    assert chosen == str(older)
    assert (older / RESUMES_DIR / "now").is_file()
    # a job of that resume resolves the folder again with its own overrides: it finds the launcher's choice
    assert sweep_dir("last", str(tmp_path), "now", ["data.fold=1", "resume=last"], "RunMode.MULTIRUN") == str(older)
    # a fresh sweep, and a single run (its resume is hydra.run.dir's business), get a new stamped folder
    assert sweep_dir(None, str(tmp_path), "s", command, "RunMode.MULTIRUN") == f"{tmp_path}/s"
    assert sweep_dir("last", str(tmp_path), "s", command, "RunMode.RUN") == f"{tmp_path}/s"


def test_a_report_written_by_hand_mid_sweep_does_not_end_it(tmp_path):
    """``python -m ssl_dr.report`` on a running sweep writes its report.md; killed between two jobs, the sweep
    then has a report and only finished job folders, but 2 of its 4 jobs never started: resume=last finds it."""
    command = ["data.fold=0,1,2,3", "experiment=baseline"]
    folder = _fake_sweep(tmp_path, "a", command, {"0": True, "1": True}, report=True)
    (folder / SWEEP_SIZE).write_text(json.dumps({"jobs": 4, "started": 0.0}))
    assert not sweep_finished(folder)
    assert sweep_dir("last", str(tmp_path), "now", [*command, "resume=last"], "RunMode.MULTIRUN") == str(folder)
    for job in ("2", "3"):
        (folder / job / ".hydra").mkdir(parents=True)
        (folder / job / "metrics.json").write_text("{}")
    assert sweep_finished(folder)


def test_a_sweep_with_a_failed_job_is_unfinished_even_with_its_report(tmp_path):
    folder = _fake_sweep(tmp_path, "a", ["x=1,2"], {"0": True, "1": False}, report=True)
    assert not sweep_finished(folder)
    assert sweep_dir(str(folder), str(tmp_path), "now", ["x=1,2"], "RunMode.MULTIRUN") == str(folder)


@pytest.mark.parametrize(("resume", "message"), [
    ("last", "no unfinished sweep started with"),
    ("{finished}", "already finished"),
    ("{other}", "resume only with the same command"),
    ("{not_a_sweep}", "is not a sweep folder"),
])
def test_resume_refusals_name_the_reason(tmp_path, resume, message):
    folders = {"finished": _fake_sweep(tmp_path, "f", ["x=1,2"], {"0": True}, report=True),
               "other": _fake_sweep(tmp_path, "o", ["x=3,4"], {"0": False}, report=False),
               "not_a_sweep": tmp_path / "plain"}
    folders["not_a_sweep"].mkdir()
    with pytest.raises(ValueError, match=message):
        sweep_dir(resume.format(**folders), str(tmp_path), "now", ["x=1,2", "resume=x"], "RunMode.MULTIRUN")


def test_a_finished_job_keeps_its_hydra_files(tmp_path):
    assert config_subdir(tmp_path) == ".hydra"
    assert config_subdir(None) == ".hydra"
    (tmp_path / "metrics.json").write_text("{}")
    assert config_subdir(tmp_path) is None


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")],
                         ids=["basic", "joblib"])
def test_killed_sweep_resumes_in_its_folder_keeping_finished_jobs(tmp_path, launcher):
    """Kill a real 4-job sweep (the whole process group, SIGKILL) after 2 finished jobs, resume it. The joblib
    launcher (under hydra/launcher=local_gpus) resolves the sweep folder again in its worker processes."""
    if launcher:
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweeps = tmp_path / "outputs" / "resumed" / "multiruns"
    process = subprocess.Popen(_command(*launcher), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 600
    while len(_finished(sweeps)) < 2:
        assert process.poll() is None, "the sweep ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _finished(sweeps)}
    kept = {p: p.read_bytes() for p in sweeps.glob("*/[01]/.hydra/*.yaml")}
    assert len(before) >= 2 and not list(sweeps.glob(f"*/{SWEEP_REPORT}"))

    resume = _command(*launcher, "resume=last")
    result = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = sweeps.iterdir()  # one sweep folder, continued
    assert len(_finished(sweeps)) == 4
    for path, (content, mtime) in before.items():
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime, path
    for path, content in kept.items():
        assert path.read_bytes() == content, path
    assert (result.stdout + result.stderr).count("finished before (metrics.json), not run again") == len(before)
    report = (folder / SWEEP_REPORT).read_text()
    assert "Incomplete" not in report and "| baseline |" in report
    assert sweep_finished(folder)
    again = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "no unfinished sweep started with" in again.stderr
