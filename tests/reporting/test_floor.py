"""``python -m ssl_dr.report SWEEP --floor PROBES`` (ssl_dr.reporting.floor) on fake sweeps: a fine-tune sweep's rows
paired with the classical jobs of a probe sweep on the same folds, by hand; refused without classical jobs, on
another split, and no stale floor file without the option."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from ssl_dr.report import main
from tests.reporting.test_protocols import corrected
from tests.test_report import write_job

FOLDS = (0, 1, 2, 3, 4)
FRACTIONS = (0.05, 0.1)


def folds_file(split_seed: int, data: str = "d4e5") -> str:
    return f"folds-k5-seed{split_seed}-{data}.csv"


def qwk(arm: str, protocol: str, fraction: float, fold: int) -> float:
    """A score per job with a fold term of its own per arm, so the paired differences have a spread."""
    offset = {"baseline": 0.40, "rotation": 0.45, "classical": 0.30}[arm] + (0.05 if protocol == "knn" else 0.0)
    own = {"baseline": 0.0, "rotation": 0.007 * ((3 * fold + 1) % 4), "classical": 0.005 * ((2 * fold) % 3)}[arm]
    return offset + fraction + 0.01 * fold + own


def sweep(root: Path, arms: tuple[str, ...], protocol: str, data: str = "d4e5",
          protocols: tuple[str, ...] | None = None) -> Path:
    """Every arm x protocol x fraction x fold finished at seed = split seed = 42, each job naming its folds file."""
    folder = root / "multiruns" / "2026-02-01_00-00-00"
    num = 0
    for arm in arms:
        for proto in protocols or (protocol,):
            for fraction in FRACTIONS:
                for fold in FOLDS:
                    write_job(folder, num, arm, fraction, fold, qwk(arm, proto, fraction, fold), chooser="arm",
                              protocol=proto, metrics={"folds_file": folds_file(42, data)})
                    num += 1
    return folder


def test_every_fine_tune_row_is_paired_with_each_classical_probe_by_hand(tmp_path, capsys):
    fine_tunes = sweep(tmp_path / "ft", ("baseline", "rotation"), "finetune")
    probes = sweep(tmp_path / "probe", ("baseline", "classical"), "linear", protocols=("linear", "knn"))
    assert main([str(fine_tunes), "--floor", str(probes)]) == 0
    out = capsys.readouterr().out
    assert f"## Against the classical floor of `{probes}`" in out
    assert "arm minus classical (linear)" in out and "arm minus classical (knn)" in out
    floor = pd.read_csv(fine_tunes / "report_floor.csv")
    assert len(floor) == 2 * 2 * len(FRACTIONS)  # (baseline, rotation) x (linear, knn) x fractions
    for arm in ("baseline", "rotation"):
        for protocol in ("linear", "knn"):
            for fraction in FRACTIONS:
                diffs = [qwk(arm, "finetune", fraction, k) - qwk("classical", protocol, fraction, k) for k in FOLDS]
                (row,) = floor[(floor.arm == f"{arm} (finetune)") & (floor.baseline == f"classical ({protocol})")
                               & (floor.label_fraction == fraction)].itertuples()
                low, high = corrected(diffs)
                assert row.pairs == 5 and math.isclose(row.diff_mean, sum(diffs) / 5)
                assert math.isclose(row.ci_low, low) and math.isclose(row.ci_high, high)
    assert "report_floor.csv" in out  # named among the files written


def test_the_same_folds_file_in_another_cache_folder_pairs(tmp_path):
    """metrics.json names the folds file by its absolute path: a sweep run with another paths.cache_dir (or on
    another machine) used the same split when the file's name (k, split seed, data fingerprint) is the same."""
    fine_tunes = sweep(tmp_path / "ft", ("baseline", "rotation"), "finetune", data="d4e5")
    probes = sweep(tmp_path / "probe", ("classical",), "linear", data="d4e5")
    for folder, cache in ((fine_tunes, "/home/a/cache"), (probes, "/scratch/b/cache")):
        for metrics in folder.glob("*/metrics.json"):
            metrics.write_text(metrics.read_text().replace(f'"{folds_file(42)}"', f'"{cache}/folds/{folds_file(42)}"'))
    assert main([str(fine_tunes), "--floor", str(probes)]) == 0
    assert len(pd.read_csv(fine_tunes / "report_floor.csv")) == 2 * len(FRACTIONS)


def test_a_floor_without_classical_jobs_is_refused(tmp_path, capsys):
    fine_tunes = sweep(tmp_path / "ft", ("baseline", "rotation"), "finetune")
    probes = sweep(tmp_path / "probe", ("baseline", "rotation"), "linear")
    assert main([str(fine_tunes), "--floor", str(probes)]) == 2
    assert f"--floor {probes}: no finished classical job" in capsys.readouterr().err


def test_a_floor_on_other_photographs_is_refused(tmp_path, capsys):
    """Same split seed and fold numbers, other data (another folds file): the test folds are other images."""
    fine_tunes = sweep(tmp_path / "ft", ("baseline", "rotation"), "finetune")
    probes = sweep(tmp_path / "probe", ("classical",), "linear", data="ffff")
    assert main([str(fine_tunes), "--floor", str(probes)]) == 2
    err = capsys.readouterr().err
    assert folds_file(42, "ffff") in err and folds_file(42) in err and "not the same images" in err


@pytest.mark.parametrize("again", [False, True])
def test_no_floor_file_without_the_option(tmp_path, again):
    """A report without --floor writes no report_floor.csv, and removes one an earlier report left."""
    fine_tunes = sweep(tmp_path / "ft", ("baseline", "rotation"), "finetune")
    if again:
        probes = sweep(tmp_path / "probe", ("classical",), "linear")
        assert main([str(fine_tunes), "--floor", str(probes)]) == 0
        assert (fine_tunes / "report_floor.csv").is_file()
    assert main([str(fine_tunes)]) == 0
    assert not (fine_tunes / "report_floor.csv").exists()
    assert "classical floor" not in (fine_tunes / "report.md").read_text()
