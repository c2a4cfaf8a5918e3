"""The report names the environment(s) a sweep's jobs ran in, warns when they are several, and counts the jobs
that recorded none; from hand-written environment.json files, without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ssl_dr.reporting.environments import MAX_FIELDS, differing_fields, environment_lines, mixed_warning

HERE = {"python": {"version": "3.11.7", "implementation": "CPython"},
        "packages": {"torch": "2.14.1", "lightning": "2.6.6", "numpy": "2.4.6"},
        "code": {"commit": "a" * 40, "dirty": False, "reason": None},
        "cpu": {"model": "Intel(R) Xeon(R) Processor", "logical": 2, "usable": 2},
        "torch": {"threads": 2}, "gpu": None, "fingerprint": "111111111111",
        "summary": "torch 2.14.1, lightning 2.6.6, python 3.11.7, Xeon, 2 threads, commit aaaaaaa"}
THERE = {**HERE, "packages": {**HERE["packages"], "torch": "2.13.0"}, "torch": {"threads": 8},
         "fingerprint": "222222222222",
         "summary": "torch 2.13.0, lightning 2.6.6, python 3.11.7, Xeon, 8 threads, commit aaaaaaa"}


def _jobs(root: Path, *environments: dict | str | None) -> list[Path]:
    """One job folder per entry: its environment.json (a dict), raw text (a broken file) or none (None)."""
    jobs = []
    for number, env in enumerate(environments):
        job = root / str(number)
        job.mkdir()
        (job / "metrics.json").write_text("{}")
        if env is not None:
            (job / "environment.json").write_text(env if isinstance(env, str) else json.dumps(env))
        jobs.append(job)
    return jobs


def test_one_environment_is_named_once_with_its_job_count(tmp_path):
    lines = environment_lines(_jobs(tmp_path, HERE, HERE, HERE))
    assert lines == ["Environment:", f"- {HERE['summary']} (3 jobs, fingerprint `111111111111`)"]
    assert not any("WARNING" in line for line in lines)


def test_mixed_environments_warn_and_name_the_fields_that_differ(tmp_path):
    lines = environment_lines(_jobs(tmp_path, HERE, THERE, HERE))
    assert lines[0].startswith("**WARNING: this sweep mixes 2 environments**")
    assert "`packages.torch` (2.14.1 / 2.13.0)" in lines[0] and "`torch.threads` (2 / 8)" in lines[0]
    assert "numpy" not in lines[0] and "fingerprint" not in lines[0] and "summary" not in lines[0]
    assert lines[2:] == ["Environments:", f"- {HERE['summary']} (2 jobs, fingerprint `111111111111`)",
                         f"- {THERE['summary']} (1 job, fingerprint `222222222222`)"]


def test_jobs_without_an_environment_are_counted_and_named(tmp_path):
    lines = environment_lines(_jobs(tmp_path, HERE, None, "{not json", HERE))
    assert lines[:2] == ["Environment:", f"- {HERE['summary']} (2 jobs, fingerprint `111111111111`)"]
    assert lines[-1].startswith("2 of 4 jobs have no readable environment.json") and "`1`, `2`" in lines[-1]
    (tmp_path / "old").mkdir()
    older = environment_lines(_jobs(tmp_path / "old", None, None))
    assert len(older) == 1 and older[0].startswith("2 of 2 jobs have no readable environment.json")
    assert environment_lines([]) == []


def test_a_long_difference_is_cut_to_the_first_fields_in_the_files_order():
    many = {**HERE, "packages": {f"pkg{i}": "1.0" for i in range(MAX_FIELDS + 3)}}
    other = {**HERE, "packages": {f"pkg{i}": "2.0" for i in range(MAX_FIELDS + 3)}, "gpu": {"count": 1}}
    fields = differing_fields([many, other])
    assert list(fields) == [*(f"packages.pkg{i}" for i in range(MAX_FIELDS + 3)), "gpu.count"]
    assert fields["gpu.count"] == [None, 1]  # no GPU in one of them
    warning = mixed_warning([many, other])
    assert "`packages.pkg7` (1.0 / 2.0)" in warning and "pkg8" not in warning and "and 4 more" in warning


def test_the_report_side_reads_environments_without_torch():
    code = ("import sys, ssl_dr.reporting.environments; "
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
