"""The protocol as a report axis (ssl_dr.reporting.protocols) on fake sweeps of frozen-feature probes: a row per
arm x protocol x fraction, pairs with the baseline of the same protocol, the expected jobs of every swept
protocol, one plot line per arm x protocol, and the classical reference's line."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats

from ssl_dr.report import main
from ssl_dr.reporting.jobs import ReportError, collect
from ssl_dr.reporting.writer import write_report
from tests.test_report import write_job

ARMS = ("baseline", "rotation", "classical")
# mean test QWK of each arm x protocol before the fraction, fold and seed terms: the baselines of the two
# protocols lie 0.2 apart, so a pair made across protocols would show another difference
OFFSET = {("baseline", "linear"): 0.30, ("rotation", "linear"): 0.36, ("classical", "linear"): 0.33,
          ("baseline", "knn"): 0.10, ("rotation", "knn"): 0.09, ("classical", "knn"): 0.20}
MULTIRUN = """hydra:
  sweeper:
    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper
    params: null
  overrides:
    task:
    - arm={arms}
    - protocol={protocols}
    - data.label_fraction=0.05,0.1
    - data.fold={folds}
    - seed={seeds}
    - data.split_seed=${{seed}}
"""


def qwk(arm: str, protocol: str, fraction: float, fold: int, seed: int) -> float:
    """Test QWK that moves with fold and seed; the deep and classical arms get a term of their own per fold and
    seed, so the paired differences have a spread."""
    own = 0.0 if arm == "baseline" else 0.004 * ((3 * fold + seed) % 4)
    return OFFSET[arm, protocol] + fraction + 0.01 * fold + 0.02 * (seed - 42) + own


def probe_sweep(root: Path, protocols: tuple[str, ...] = ("linear", "knn"), folds: tuple[int, ...] = (0, 1, 2, 3, 4),
                seeds: tuple[int, ...] = (42, 43, 44), arms: tuple[str, ...] = ARMS) -> Path:
    """``python -m ssl_dr.train -m arm=baseline,rotation,classical protocol=linear,knn data.label_fraction=0.05,0.1
    data.fold=0,1,2,3,4 seed=42,43,44 data.split_seed='${seed}'``: every job finished, numbered in Hydra's order."""
    sweep = root / "multiruns" / "2026-02-01_00-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(MULTIRUN.format(
        arms=",".join(arms), protocols=",".join(protocols), folds=",".join(map(str, folds)),
        seeds=",".join(map(str, seeds))))
    num = 0
    for arm in arms:
        for protocol in protocols:
            for fraction in (0.05, 0.1):
                for fold in folds:
                    for seed in seeds:
                        write_job(sweep, num, arm, fraction, fold, qwk(arm, protocol, fraction, fold, seed),
                                  chooser="arm", seed=seed, split_seed="${seed}", protocol=protocol)
                        num += 1
    return sweep


def corrected(diffs: list[float], num_folds: int = 5) -> tuple[float, float]:
    """Bouckaert & Frank's corrected repeated k-fold t interval, by hand."""
    mean = statistics.fmean(diffs)
    se = math.sqrt(1 / len(diffs) + 1 / (num_folds - 1)) * statistics.stdev(diffs)
    return stats.t.interval(0.95, df=len(diffs) - 1, loc=mean, scale=se)


def test_the_probe_sweep_is_complete_with_a_row_per_arm_and_protocol(tmp_path, capsys):
    sweep = probe_sweep(tmp_path)
    results = collect(sweep)
    assert results.gaps == [] and len(results.jobs) == 180
    assert (results.arms, results.protocols) == (["baseline", "classical", "rotation"], ["knn", "linear"])
    assert results.repetitions == [(42, 42), (43, 43), (44, 44)] and results.runs_per_cell == 15
    assert main([str(sweep)]) == 0
    assert "Expected jobs (multirun.yaml sweep + job configs): 3 arms x 2 protocol(s) (knn, linear) x 2 fractions " \
           "x 5 folds x 3 repetition(s) (seed/split seed: 42/42, 43/43, 44/44) = 180" in capsys.readouterr().out
    table = pd.read_csv(sweep / "report.csv")
    assert list(table.columns[:3]) == ["arm", "protocol", "label_fraction"]
    assert list(dict.fromkeys(table.arm)) == ["baseline (knn)", "classical (knn)", "rotation (knn)",
                                              "baseline (linear)", "classical (linear)", "rotation (linear)"]
    assert (table.arm == table.arm.str.split(" ").str[0] + " (" + table.protocol + ")").all()
    cells = table.set_index(["arm", "label_fraction"])
    for arm in ARMS:
        for protocol in ("linear", "knn"):
            values = [qwk(arm, protocol, 0.05, fold, seed) for fold in range(5) for seed in (42, 43, 44)]
            row = cells.loc[(f"{arm} ({protocol})", 0.05)]
            assert (row.runs_present, row.runs_expected, row.repetitions) == (15, 15, 3)
            assert (row.qwk_min, row.qwk_avg, row.qwk_max) == (
                pytest.approx(min(values)), pytest.approx(statistics.fmean(values)), pytest.approx(max(values)))
    markdown = (sweep / "report.md").read_text()
    avg = statistics.fmean(qwk("rotation", "linear", 0.1, f, s) for f in range(5) for s in (42, 43, 44))
    assert f"| rotation (linear) | 10% | 15/15 | {avg:.3f} (" in markdown


def test_each_arm_is_paired_with_the_baseline_of_its_own_protocol(tmp_path):
    """rotation+linear minus baseline+linear, classical+knn minus baseline+knn: by split seed, fold and seed."""
    files = write_report(probe_sweep(tmp_path))
    paired = pd.read_csv(files.paired_csv)
    assert list(paired.columns[:3]) == ["arm", "protocol", "baseline"]
    assert len(paired) == 8 and set(paired.pairs) == {15} and set(paired.repetitions) == {3}
    assert (paired.baseline == "baseline (" + paired.protocol + ")").all()
    for arm in ("rotation", "classical"):
        for protocol in ("linear", "knn"):
            for fraction in (0.05, 0.1):
                diffs = [qwk(arm, protocol, fraction, fold, seed) - qwk("baseline", protocol, fraction, fold, seed)
                         for fold in range(5) for seed in (42, 43, 44)]
                row = paired.set_index(["arm", "label_fraction"]).loc[(f"{arm} ({protocol})", fraction)]
                assert row.diff_mean == pytest.approx(statistics.fmean(diffs))
                assert (row.ci_low, row.ci_high) == tuple(pytest.approx(x) for x in corrected(diffs))
                assert not row.shared_partition  # each seed its own partition
    markdown = files.markdown.read_text()
    for protocol in ("knn", "linear"):
        assert f"## Paired difference: arm minus baseline ({protocol}), same split seed, fold and seed" in markdown
    diffs = [qwk("classical", "knn", 0.05, f, s) - qwk("baseline", "knn", 0.05, f, s)
             for f in range(5) for s in (42, 43, 44)]
    assert f"| classical (knn) | 5% | 15 | 0,1,2,3,4 | 3 (seed 42,43,44; split seed 42,43,44) | " \
           f"{statistics.fmean(diffs):+.3f} |" in markdown


def test_missing_and_failed_jobs_of_a_swept_protocol_are_named_with_it(tmp_path, capsys):
    sweep = probe_sweep(tmp_path, folds=(0, 1), seeds=(42,))
    for fraction in (0.05, 0.1):
        for fold in (0, 1):  # every knn job of rotation gone: protocol=linear,knn still expects them
            shutil.rmtree(job_dir_of(sweep, "rotation", "knn", fraction, fold))
    crashed = job_dir_of(sweep, "classical", "linear", 0.1, 1)
    (crashed / "metrics.json").unlink()
    (crashed / "train.log").write_text("[ERROR] - job failed: DataError: no features\n")
    results = collect(sweep)
    assert sorted(map(str, results.gaps)) == sorted(
        [f"MISSING: arm=rotation protocol=knn fraction={f:g} fold={k} seed=42 split_seed=42 (no job folder)"
         for f in (0.05, 0.1) for k in (0, 1)]
        + [f"FAILED: arm=classical protocol=linear fraction=0.1 fold=1 seed=42 split_seed=42 (job {crashed.name}: "
           "[ERROR] - job failed: DataError: no features)"])
    assert main([str(sweep)]) == 1
    markdown = (sweep / "report.md").read_text()
    assert "| rotation (knn) | 5% | 0/2 **incomplete** | no finished run |" in markdown
    assert "| classical (linear) | 10% | 1/2 **incomplete** |" in markdown


def test_a_protocol_whose_jobs_all_vanished_is_still_expected(tmp_path):
    sweep = probe_sweep(tmp_path, folds=(0,), seeds=(42,))
    for job in list(sweep.glob("*/metrics.json")):
        if '"protocol": "knn"' in job.read_text():
            shutil.rmtree(job.parent)
    results = collect(sweep)
    assert results.protocols == ["knn", "linear"] and len(results.gaps) == 6
    assert "rotation (knn)" in set(write_report(sweep).table.arm)


def test_fine_tunes_older_than_protocols_beside_probes(tmp_path):
    """Jobs without any protocol key (written before protocols) are fine-tunes: rows ``rotation (finetune)``
    paired with ``baseline (finetune)``; their gaps are named as before (no protocol=)."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - arm=baseline,rotation\n"
                                         "    - protocol=finetune,linear\n    - data.fold=0,1\n")
    num = 0
    for arm in ("baseline", "rotation"):
        for protocol in ("finetune", "linear"):
            for fold in (0, 1):
                if (arm, protocol, fold) == ("rotation", "finetune", 1):
                    continue  # never ran
                write_job(sweep, num, arm, 1.0, fold, qwk(arm, "linear", 0.0, fold, 42) + (protocol == "finetune"),
                          chooser="arm", protocol=None if protocol == "finetune" else protocol)
                num += 1
    files = write_report(sweep)
    assert [str(gap) for gap in files.gaps] == [
        "MISSING: arm=rotation fraction=1 fold=1 seed=42 split_seed=42 (no job folder)"]
    assert list(files.table.arm) == ["baseline (finetune)", "rotation (finetune)", "baseline (linear)",
                                     "rotation (linear)"]
    pairs = files.paired.set_index("arm")
    assert pairs.loc["rotation (finetune)", "baseline"] == "baseline (finetune)"
    assert pairs.loc["rotation (finetune)", "pairs"] == 1
    assert pairs.loc["rotation (finetune)", "diff_mean"] == pytest.approx(0.06 + 0.004 * (42 % 4))  # fold 0 only
    assert pairs.loc["rotation (linear)", "diff_mean"] == pytest.approx(0.06 + 0.004 * (42 % 4 + 45 % 4) / 2)


def test_only_a_duplicate_including_the_protocol_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_job(sweep, 0, "rotation", 1.0, 0, 0.5, protocol="linear")
    write_job(sweep, 1, "rotation", 1.0, 0, 0.6, protocol="knn")
    assert len(collect(sweep).jobs) == 2
    write_job(sweep, 2, "rotation", 1.0, 0, 0.7, protocol="knn")
    with pytest.raises(ReportError, match="jobs 1, 2 are all arm=rotation protocol=knn fraction=1 fold=0 seed=42 "
                                          "split_seed=42; the report groups by"):
        collect(sweep)


def test_the_plot_draws_one_line_per_arm_and_protocol(tmp_path):
    """One colour per arm and one line style per protocol, one legend entry per row."""
    from ssl_dr.reporting.writer import plot

    sweep = probe_sweep(tmp_path, folds=(0,), seeds=(42,))
    files = write_report(sweep)
    fig = plot(files.table, tmp_path / "plot.png", "probes", paper_reference=False)
    ax = fig.axes[0]
    lines = {text.get_text().split(" (mean")[0]: line for text, line in
             zip(ax.get_legend().get_texts(), ax.get_lines(), strict=True)}
    assert sorted(lines) == sorted(files.table.arm.unique()) and len(lines) == 6
    assert lines["rotation (linear)"].get_color() == lines["rotation (knn)"].get_color()
    assert lines["rotation (linear)"].get_color() != lines["baseline (linear)"].get_color()
    assert lines["rotation (linear)"].get_linestyle() != lines["rotation (knn)"].get_linestyle()
    assert lines["baseline (knn)"].get_linestyle() == lines["rotation (knn)"].get_linestyle()
    assert list(lines["rotation (knn)"].get_ydata()) == pytest.approx(
        [qwk("rotation", "knn", f, 0, 42) for f in (0.05, 0.1)])


def test_classical_reference_line_names_the_deep_arms_below_it(tmp_path):
    markdown = write_report(probe_sweep(tmp_path, folds=(0, 1), seeds=(42,))).markdown.read_text()
    (line,) = [text for text in markdown.splitlines() if text.startswith("**classical** is the reference")]
    assert "a deep arm below it under the same protocol has learnt nothing about retinopathy that colour/texture " \
           "statistics do not already give" in line
    # linear: only the baseline is below classical; knn: both deep arms (OFFSET)
    assert line.endswith("Below it here: baseline (knn) at 5%, baseline (knn) at 10%, rotation (knn) at 5%, "
                         "rotation (knn) at 10%, baseline (linear) at 5%, baseline (linear) at 10%.")
    assert markdown.index("## Test QWK") < markdown.index(line) < markdown.index("## Labels read")


def test_no_classical_arm_no_reference_line(tmp_path):
    sweep = probe_sweep(tmp_path, folds=(0,), seeds=(42,), arms=("baseline", "rotation"))
    assert "is the reference without a network" not in write_report(sweep).markdown.read_text()



def job_dir_of(sweep: Path, arm: str, protocol: str, fraction: float, fold: int, seed: int = 42) -> Path:
    """The folder of one job of a probe sweep (``job_dir`` without the protocol would match two)."""
    for cfg_path in sweep.glob("*/.hydra/config.yaml"):
        cfg = OmegaConf.load(cfg_path)
        if (cfg.arm, cfg.protocol.name, cfg.data.label_fraction, cfg.data.fold, cfg.seed) == (
                arm, protocol, fraction, fold, seed):
            return cfg_path.parent.parent
    raise LookupError((arm, protocol, fraction, fold, seed))
