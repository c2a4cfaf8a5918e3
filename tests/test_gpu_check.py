"""The GPU check cannot rot: its dry run (the same steps on the CPU at tiny sizes, generated images) measures,
sweeps both arms and leaves the report; the real run refuses to start without the bundle; the bundle holds
the images at the training size and asks pip for cp312 manylinux wheels at the versions tested here."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e  # end to end: the `e2e` tier (.ci/run), not the default run

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.sh"
OUT_FILES = ["gpu_check.log", "jobs.csv", "qwk_vs_fraction.png", "report.csv", "report.md", "report_paired.csv",
             "throughput.txt"]


def check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_BUNDLE": str(tmp_path / "no-bundle"), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900)


def test_dry_run_measures_sweeps_both_arms_and_leaves_the_report(tmp_path):
    out = tmp_path / "out"
    done = check(tmp_path, "--dry-run", str(out))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == OUT_FILES  # the device returns at most 8 files
    throughput = (out / "throughput.txt").read_text()
    for phase in ("fine-tune", "pretext"):
        assert re.search(rf"^{phase}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+x", throughput, re.M), throughput
    assert re.search(r"^  total .* [\d.]+ min$", throughput, re.M)
    jobs = pd.read_csv(out / "jobs.csv")
    assert sorted(jobs.arm) == ["baseline", "rotation"] and jobs["test/qwk"].notna().all()
    assert jobs.loc[jobs.arm == "rotation", "pretext/val_acc"].notna().all()
    report = (out / "report.md").read_text()
    assert "| rotation | 100% |" in report and "| baseline | 100% |" in report
    log = (out / "gpu_check.log").read_text()
    assert "no bundle at" in log and "=== done" in log  # generated images stood in for the bundle


def test_the_real_run_refuses_to_start_without_the_bundle(tmp_path):
    done = check(tmp_path, str(tmp_path / "out"))
    assert done.returncode == 2
    assert re.search(r"error: .*no-bundle/wheels/requirements.txt missing: run python "
                     r"benchmarks/prepare_gpu_bundle.py", done.stdout)


def load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_gpu_bundle", BENCHMARKS / "prepare_gpu_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bundle_reencodes_the_images_at_the_training_size(tmp_path, capsys):
    source = tmp_path / "eyepacs"
    (source / "images").mkdir(parents=True)
    (source / "labels.csv").write_text("id_code,diagnosis,patient_id,eye\n1_left,0,1,left\n1_right,2,1,right\n")
    for eye in ("left", "right"):
        cv2.imwrite(str(source / "images" / f"1_{eye}.jpeg"), np.full((256, 256, 3), 90, np.uint8))
    prepare = load_prepare()
    assert prepare.main(["--no-wheels", "--images", str(source), "--size", "48", "--out", str(tmp_path / "b")]) == 0
    images = sorted((tmp_path / "b" / "eyepacs-dev" / "images").iterdir())
    assert [p.name for p in images] == ["1_left.jpeg", "1_right.jpeg"]
    assert cv2.imread(str(images[0])).shape == (48, 48, 3)
    assert (tmp_path / "b" / "eyepacs-dev" / "labels.csv").read_text() == (source / "labels.csv").read_text()
    assert re.match(r"[0-9a-f]{40}|unknown", (tmp_path / "b" / "COMMIT").read_text())
    assert re.search(r"2 images at 48 px .* travels [\d.]+ MiB of 64", capsys.readouterr().out)
    assert prepare.main(["--no-wheels", "--images", str(source), "--out", str(tmp_path / "c"),
                         "--limit-mib", "0.001"]) == 2
    assert "over --limit-mib 0.001: lower --quality or --size" in capsys.readouterr().err


def test_the_wheels_are_cp312_manylinux_binaries_at_the_tested_versions(tmp_path):
    prepare = load_prepare()
    download, build = prepare.wheel_commands(tmp_path)
    assert download[3:7] == ["download", "--no-deps", "--only-binary=:all:", "--python-version"]
    assert download[download.index("--python-version") + 1] == "3.12"
    assert "manylinux2014_x86_64" in download and "cp" in download
    for name in ("hydra-core", "omegaconf", "albumentations", "albucore", "pydantic", "pydantic-core"):
        assert f"{name}=={metadata.version(name)}" in download
    antlr = metadata.version("antlr4-python3-runtime")
    assert build[3:5] == ["wheel", "--no-deps"] and f"antlr4-python3-runtime=={antlr}" in build
    assert prepare.pinned(prepare.REQUIRED) == [f"{n}=={metadata.version(n)}" for n in
                                                ("hydra-core", "omegaconf", "albumentations")]
    needed = [r for r in metadata.requires("omegaconf") if r.startswith("antlr4-python3-runtime")]
    assert needed and antlr.startswith(needed[0].split("==")[1].rstrip("*"))  # the version OmegaConf pins


@pytest.mark.parametrize("missing", ["labels.csv", "images"])
def test_a_source_without_the_layout_names_the_file(tmp_path, missing, capsys):
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "labels.csv").write_text("id_code,diagnosis\n7_left,1\n")
    if missing == "labels.csv":
        (source / "labels.csv").write_text("name,grade\nx,1\n")
    with pytest.raises(SystemExit, match=r"(no id_code column|no image for id_code 7_left)"):
        load_prepare().main(["--no-wheels", "--images", str(source), "--out", str(tmp_path / "b")])
