"""environment.json says what a run ran on: the real installed versions, the commit and whether the code
differed from it, the CPU, threads and GPU; describing never fails a run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ssl_dr.training import environment
from ssl_dr.training.environment import (
    PACKAGES,
    code_version,
    cpu_model,
    describe_environment,
    fingerprint,
    gpu_description,
    nvidia_driver,
)


def test_description_names_the_installed_stack_and_this_machine(monkeypatch):
    for name in environment.THREAD_VARIABLES:  # a deterministic trainer in an earlier test sets CUBLAS_...
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    cfg = OmegaConf.create({"trainer": {"deterministic": True, "precision": "bf16-mixed"}})
    env = json.loads(json.dumps(describe_environment(cfg)))  # JSON-ready as it is
    assert {"python", "packages", "code", "platform", "cpu", "torch", "trainer", "variables", "gpu",
            "fingerprint", "summary"} <= env.keys()
    assert env["python"] == {"version": platform.python_version(), "implementation": platform.python_implementation()}
    for name in PACKAGES:
        assert env["packages"][name] == metadata.version(name), name
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]  # the wheel's local tag (+cu130) aside
    cv2 = [name for name in env["packages"] if name.startswith("opencv")]
    assert len(cv2) == 1 and env["packages"][cv2[0]] == metadata.version(cv2[0])
    assert env["cpu"]["logical"] == os.cpu_count() and env["cpu"]["usable"] == len(os.sched_getaffinity(0))
    assert env["torch"]["threads"] == torch.get_num_threads()
    assert env["torch"]["interop_threads"] == torch.get_num_interop_threads()
    assert env["torch"]["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert env["trainer"] == {"deterministic": True, "precision": "bf16-mixed"}
    assert env["variables"] == {"OMP_NUM_THREADS": "3"}  # set ones only
    if not torch.cuda.is_available():
        assert env["gpu"] is None
    assert f"torch {metadata.version('torch')}" in env["summary"] and env["python"]["version"] in env["summary"]
    assert len(env["fingerprint"]) == 12 and env["fingerprint"] == describe_environment(cfg)["fingerprint"]


def test_fingerprint_moves_with_a_package_or_the_commit_not_with_the_kernel():
    env = describe_environment()
    moved = json.loads(json.dumps(env))
    moved["platform"] = "Linux-another-kernel"
    moved["cpu"]["usable"] = 1
    assert fingerprint(moved) == fingerprint(env)
    moved["packages"]["numpy"] = "0.0.1"
    assert fingerprint(moved) != fingerprint(env)
    other_commit = json.loads(json.dumps(env))
    other_commit["code"]["commit"] = "0" * 40
    assert fingerprint(other_commit) != fingerprint(env)


def test_gpu_description_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H200 #{i}")
    monkeypatch.setattr(environment, "nvidia_driver", lambda: "580.1")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91200)
    gpu = gpu_description()
    assert gpu["count"] == 2 and gpu["names"] == ["NVIDIA H200 #0", "NVIDIA H200 #1"]
    assert gpu["driver"] == "580.1" and gpu["cuda"] == torch.version.cuda
    assert gpu["cudnn"] == (91200 if torch.backends.cudnn.is_available() else None)


def test_no_nvidia_smi_leaves_the_driver_unknown(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_driver() is None


def _git(folder: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args]
    return subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git checkout with a package folder in it, committed."""
    package = tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    _git(package.parent, "init", "-q")
    _git(package.parent, "add", ".")
    _git(package.parent, "commit", "-q", "-m", "first")
    return package


def test_commit_of_a_clean_and_a_dirty_checkout(checkout):
    commit = _git(checkout, "rev-parse", "HEAD")
    assert code_version(checkout) == {"commit": commit, "dirty": False, "reason": None}
    (checkout / "notes.txt").write_text("untracked: data, caches, run folders")
    assert code_version(checkout)["dirty"] is False  # as git describe --dirty
    (checkout / "__init__.py").write_text("x = 2\n")
    assert code_version(checkout) == {"commit": commit, "dirty": True, "reason": None}


@pytest.fixture
def fresh_loaded_code():
    """``loaded_code`` asks git once per process: each test here starts and leaves it unasked."""
    environment.loaded_code.cache_clear()
    yield environment.loaded_code
    environment.loaded_code.cache_clear()


def test_a_run_names_the_commit_its_process_loaded_not_one_made_while_the_sweep_ran(checkout, monkeypatch,
                                                                                    fresh_loaded_code):
    """Hydra's basic launcher runs a whole sweep in one process. A commit made while it runs (the session
    that measured issue 22's sweep did) changes no code the process has imported, so later jobs must still
    name the first commit, not the new one; otherwise the report warns of environments that never differed."""
    monkeypatch.setattr(environment, "SOURCE_DIR", checkout)
    loaded = fresh_loaded_code()  # train() asks as the sweep's first job starts
    assert loaded == {"commit": _git(checkout, "rev-parse", "HEAD"), "dirty": False, "reason": None}
    (checkout / "__init__.py").write_text("x = 2\n")
    _git(checkout.parent, "commit", "-qam", "made while the sweep ran")
    assert code_version(checkout)["commit"] != loaded["commit"]  # git now names the new commit ...
    assert fresh_loaded_code() == loaded  # ... the process still names the code it runs
    assert describe_environment()["code"] == loaded


def test_outside_a_checkout_the_commit_is_unknown_with_the_reason(tmp_path, checkout):
    wheel = tmp_path / "site-packages" / "pkg"
    wheel.mkdir(parents=True)
    (wheel / "__init__.py").write_text("")
    version = code_version(wheel)
    assert version["commit"] == "unknown" and version["dirty"] is None and "not a git checkout" in version["reason"]
    inside = checkout.parent / "venv" / "pkg"  # an installed copy inside some checkout is not that checkout
    inside.mkdir(parents=True)
    (inside / "__init__.py").write_text("")
    assert code_version(inside)["commit"] == "unknown"


def test_no_git_or_a_hanging_git_never_fails_the_run(monkeypatch, checkout):
    monkeypatch.setenv("PATH", str(checkout))
    assert code_version(checkout) == {"commit": "unknown", "dirty": None, "reason": "git is not installed"}

    def hangs(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(environment.subprocess, "run", hangs)
    assert "took over" in code_version(checkout)["reason"]


def test_this_checkout_reports_its_commit():
    repo = Path(environment.__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert describe_environment()["code"]["commit"] == head


def test_cpu_model_from_cpuinfo_or_the_platform(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6248\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Gold 6248"
    assert cpu_model(tmp_path / "missing") == (platform.processor() or "unknown")
