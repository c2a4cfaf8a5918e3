"""What a run ran on, written as ``environment.json`` beside ``metrics.json`` and put into the W&B config.

Why: the same commit gave other test QWKs on another machine, and on this one after a reinstall (README,
*Numbers*: at 5-25 % labels a different set of library versions alone moved the fold values). A run folder
that names its library versions, commit, CPU, threads and GPU lets a reader tell "the code changed" from
"the environment changed" without asking the person who ran it. ``fingerprint`` condenses the fields that
move numbers, so a report can say in one comparison whether a sweep's jobs ran in one environment
(``ssl_dr.reporting.environments``); ``summary`` is the line it prints.

Describing never fails a run: a missing package is ``None``, a folder outside git or a slow git is
``"unknown"`` with the reason, a missing or hanging ``nvidia-smi`` leaves the driver unknown.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "albumentations", "albucore",
            "numpy", "scipy", "scikit-learn", "pandas", "pillow", "hydra-core", "omegaconf", "wandb", "ssl_dr")
"""The stack whose versions can move a number (the model, the augmentation, the metrics, the splits)."""
CV2_DISTRIBUTIONS = ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
                     "opencv-contrib-python")
"""Each ships the same ``cv2``; the first one installed is recorded under its own name."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                    "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")
"""Variables that change threading, BLAS kernels or hashing, recorded only when set."""
COMMAND_TIMEOUT_S = 10.0
"""git and nvidia-smi are asked with this limit: a hung network file system must not hold up a run."""
SOURCE_DIR = Path(__file__).resolve().parents[1]
"""The ``ssl_dr`` package folder: its git checkout (if any) is the code that ran."""


def describe_environment(cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The environment of this process, JSON-ready; ``cfg`` (the run's config) adds the trainer's
    ``deterministic`` and ``precision`` settings, which Lightning applies only once the trainer starts."""
    trainer = (cfg or {}).get("trainer") or {}
    env: dict[str, Any] = {
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "packages": package_versions(),
        "code": dict(loaded_code()),  # a copy: the cached record serves every later job of the process
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "torch": torch_settings(),
        "trainer": {"deterministic": trainer.get("deterministic"), "precision": _plain(trainer.get("precision"))},
        "variables": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        "gpu": gpu_description(),
    }
    env["fingerprint"] = fingerprint(env)
    env["summary"] = summary(env)
    return env


def package_versions() -> dict[str, str | None]:
    """Installed versions (``importlib.metadata``, what pip installed), ``None`` for one that is missing."""
    versions = {name: _version(name) for name in PACKAGES}
    cv2 = next((name for name in CV2_DISTRIBUTIONS if _version(name) is not None), CV2_DISTRIBUTIONS[0])
    versions[cv2] = _version(cv2)
    return versions


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def loaded_code() -> dict[str, Any]:
    """``code_version`` of the ssl_dr source as it was when this process first asked (``ssl_dr.train`` asks as
    a job starts), which is the code the process imported. Hydra's basic launcher runs every job of a sweep in
    one process: asking git again as each job ends named commits made while the sweep ran, code the process
    never loaded (a sweep's report then warned of mixed environments that were one)."""
    return code_version(SOURCE_DIR)


def code_version(source_dir: Path) -> dict[str, Any]:
    """The git commit of ``source_dir`` and whether tracked files differ from it (as ``git describe --dirty``:
    untracked files do not count, so data, caches and run folders beside the code never make it dirty).

    Only a folder that git tracks counts: an installed wheel inside some other checkout (a venv in a
    repository) would otherwise report that repository's commit."""
    try:
        _git(source_dir, "ls-files", "--error-unmatch", "__init__.py")
        commit = _git(source_dir, "rev-parse", "HEAD")
        dirty = bool(_git(source_dir, "status", "--porcelain", "--untracked-files=no"))
    except _GitUnavailable as err:
        return {"commit": "unknown", "dirty": None, "reason": str(err)}
    return {"commit": commit, "dirty": dirty, "reason": None}


class _GitUnavailable(Exception):
    """Why the commit is unknown, in words for ``environment.json``."""


def _git(folder: Path, *args: str) -> str:
    try:
        result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise _GitUnavailable("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise _GitUnavailable(f"git {args[0]} took over {COMMAND_TIMEOUT_S:g} s") from None
    except OSError as err:
        raise _GitUnavailable(f"git could not run: {err}") from None
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[0]
        raise _GitUnavailable(f"{folder} is not a git checkout of the code ({first})")
    return result.stdout.strip()


def cpu_description() -> dict[str, Any]:
    """The CPU model and how many logical CPUs exist vs how many this process may use (a container or
    ``taskset`` can allow fewer, which changes speed and, through thread counts, low-order digits)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": cpu_model(), "logical": os.cpu_count(), "usable": usable}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``model name`` from ``/proc/cpuinfo`` (Linux); elsewhere ``platform.processor()``."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def torch_settings() -> dict[str, Any]:
    """Threads, the parallel backend and BLAS torch was built with (``parallel_info``: OpenMP, MKL, oneDNN
    versions), and the determinism switches as they are now."""
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "openmp": torch.backends.openmp.is_available(),
        "parallel_info": [line.strip() for line in torch.__config__.parallel_info().splitlines() if line.strip()],
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def gpu_description() -> dict[str, Any] | None:
    """The visible GPUs, driver, and the CUDA / cuDNN torch was built with; ``None`` without a GPU."""
    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"count": count, "names": [torch.cuda.get_device_name(i) for i in range(count)],
            "driver": nvidia_driver(), "cuda": torch.version.cuda, "cudnn": cudnn}


def nvidia_driver() -> str | None:
    """The driver version from ``nvidia-smi`` (torch does not report it), ``None`` when it cannot be asked."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


FINGERPRINT_FIELDS = ("python", "packages", "code.commit", "code.dirty", "cpu.model", "torch.threads",
                      "torch.interop_threads", "gpu.names", "gpu.driver", "gpu.cuda", "gpu.cudnn")
"""What the fingerprint hashes: what can move a number. Not the kernel release, the usable CPU count or the
determinism switches as they were when the description was taken (the trainer may set them later)."""


def fingerprint(env: Mapping[str, Any]) -> str:
    """12 hex digits of a hash over ``FINGERPRINT_FIELDS``: equal for two runs in the same environment."""
    chosen = {field: _field(env, field) for field in FINGERPRINT_FIELDS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _field(env: Mapping[str, Any], dotted: str) -> Any:
    value: Any = env
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def summary(env: Mapping[str, Any]) -> str:
    """One line for the report: the versions that matter most, the hardware, the threads, the commit."""
    packages, code, gpu = env["packages"], env["code"], env["gpu"]
    commit = "commit unknown" if code["commit"] == "unknown" else f"commit {code['commit'][:7]}"
    if code.get("dirty"):
        commit += " (dirty)"
    device = f"{env['cpu']['model']}, {env['torch']['threads']} threads"
    if gpu:
        device += f", {gpu['count']} x {gpu['names'][0]}"
    return (f"torch {packages.get('torch')}, lightning {packages.get('lightning')}, "
            f"python {env['python']['version']}, {device}, {commit}")


def _plain(value: Any) -> Any:
    """Precision may be an int (32) or a string ("bf16-mixed"); keep JSON scalars as they are."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
