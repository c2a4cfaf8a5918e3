"""ssl_dr.report on fake Hydra multirun folders (written here in the layout Hydra and ssl_dr.train leave)."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image
from scipy import stats

from ssl_dr.report import main
from ssl_dr.reporting.jobs import collect
from ssl_dr.reporting.writer import write_report

# test QWK per (arm, fraction): folds 0, 1, 2
QWK = {
    ("baseline", 0.05): [0.22, 0.30, 0.25],
    ("baseline", 0.1): [0.40, 0.42, 0.39],
    ("rotation", 0.05): [0.31, 0.35, 0.28],
    ("rotation", 0.1): [0.45, 0.41, 0.47],
}
MULTIRUN = """hydra:
  sweeper:
    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper
    max_batch_size: null
    params:
      {key}: {arms}
      data.label_fraction: {fractions}
      data.fold: {folds}
  overrides:
    hydra:
    - hydra.mode=MULTIRUN
    task: {task}
"""


def write_job(sweep: Path, num: int, arm: str, fraction: float, fold: int, qwk: float | None,
              chooser: str = "experiment", metrics: dict | None = None, preds: list[int] | None = None,
              num_folds: int = 5, seed: int = 42, split_seed: int | str = 42, protocol: str | None = None,
              config: dict | None = None) -> Path:
    """One job folder as ssl_dr.train leaves it (``qwk=None``: crashed before metrics.json). ``chooser``: the
    override that picked the arm: ``experiment=<arm>`` (command-line sweep) or ``arm=<arm>`` (experiment=paper).
    ``metrics``: keys added to (or, as None, removed from) metrics.json, which by default has only what runs before
    the labels/* and train/* keys wrote; ``preds``: the test predictions (None: no test_predictions.csv);
    ``protocol``: ``protocol=<name>`` in the overrides, config and metrics.json (None: a job older than protocols);
    ``split_seed="${seed}"``: the config ties the partition to the seed; ``config``: more config keys."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    cfg = {"arm": arm, "init": "pretext" if arm == "rotation" else "random", "seed": seed,
           "data": {"label_fraction": fraction, "fold": fold, "num_folds": num_folds, "split_seed": split_seed},
           "paths": {"output_dir": str(job)}, **({"protocol": {"name": protocol}} if protocol else {}),
           **(config or {})}
    OmegaConf.save(OmegaConf.create(cfg), job / ".hydra" / "config.yaml")
    overrides = [f"seed={seed}", f"{chooser}={arm}", f"data.label_fraction={fraction}", f"data.fold={fold}"]
    overrides += ["experiment=paper"] if chooser == "arm" else []
    overrides += [f"protocol={protocol}"] if protocol else []
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    split_seed = seed if split_seed == "${seed}" else split_seed
    if qwk is not None:
        metrics = {"arm": arm, "label_fraction": fraction, "fold": fold, "seed": seed, "split_seed": split_seed,
                   "test/qwk": qwk, "val/qwk_best": qwk + 0.01, **({"protocol": protocol} if protocol else {}),
                   "output_dir": str(job), "num_train": 10, **(metrics or {})}
        (job / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if v is not None}, indent=2))
    if preds is not None:
        write_predictions(job, preds)
    return job


def write_predictions(job: Path, preds: list[int]) -> None:
    """``test_predictions.csv`` as ssl_dr.training.predictions writes it (true grades cycle 0..4)."""
    pd.DataFrame({"id_code": [f"img{i}" for i in range(len(preds))], "grade": [i % 5 for i in range(len(preds))],
                  "pred": preds, **{f"p{k}": 0.2 for k in range(5)}}).to_csv(job / "test_predictions.csv", index=False)


def edit_metrics(job: Path, **changes: object) -> None:
    """Change keys of a job's metrics.json (``labels__train=5`` for ``labels/train``; None removes the key)."""
    metrics = json.loads((job / "metrics.json").read_text())
    metrics.update({key.replace("__", "/"): value for key, value in changes.items()})
    (job / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if v is not None}))


def make_sweep(root: Path, qwk: dict[tuple[str, float], list[float]] = QWK, chooser: str = "experiment",
               **job: object) -> Path:
    """A sweep over the arms / fractions / folds in ``qwk``, jobs numbered in Hydra's order; the arms are swept
    as ``experiment=...`` or (``chooser="arm"``) as conf/experiment/paper.yaml does, ``arm=...``; ``job``: more
    ``write_job`` arguments, the same for every job."""
    sweep = root / "multiruns" / "2026-01-01_00-00-00_000000"
    sweep.mkdir(parents=True)
    arms = list(dict.fromkeys(arm for arm, _ in qwk))
    fractions = list(dict.fromkeys(fraction for _, fraction in qwk))
    folds = range(len(next(iter(qwk.values()))))
    (sweep / "multirun.yaml").write_text(MULTIRUN.format(
        key=chooser, arms=",".join(arms), fractions=",".join(map(str, fractions)), folds=",".join(map(str, folds)),
        task="[experiment=paper]" if chooser == "arm" else "[]"))
    jobs = [(arm, fraction, fold) for arm in arms for fraction in fractions for fold in folds]
    for num, (arm, fraction, fold) in enumerate(jobs):
        write_job(sweep, num, arm, fraction, fold, qwk[arm, fraction][fold], chooser, **job)
    return sweep


def job_dir(sweep: Path, arm: str, fraction: float, fold: int, seed: int = 42, split_seed: int = 42) -> Path:
    for cfg_path in sweep.glob("*/.hydra/config.yaml"):
        cfg = OmegaConf.load(cfg_path)
        if (cfg.arm, cfg.data.label_fraction, cfg.data.fold, cfg.seed, cfg.data.split_seed) == (
                arm, fraction, fold, seed, split_seed):
            return cfg_path.parent.parent
    raise LookupError((arm, fraction, fold, seed, split_seed))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_dr.report", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_complete_sweep_table_cell_by_cell(tmp_path):
    sweep = make_sweep(tmp_path)
    files = write_report(sweep)
    assert files.complete and files.gaps == []
    table = pd.read_csv(sweep / "report.csv")
    assert list(table.columns) == ["arm", "label_fraction", "runs_present", "runs_expected", "repetitions",
                                   "qwk_min", "qwk_avg", "qwk_max", "qwk_std", "qwk_sd_folds", "qwk_sd_seeds",
                                   "auroc_referable", "auroc_runs", "collapsed", "collapse_checked", "labels_train",
                                   "labels_val", "labels_read",
                                   "labels_available", "val_protocol", "train_steps", "train_epochs", "best_step"]
    assert len(table) == len(QWK)
    for (arm, fraction), values in QWK.items():
        row = table[(table.arm == arm) & (table.label_fraction == fraction)].iloc[0]
        assert (row.runs_present, row.runs_expected, row.repetitions) == (3, 3, 1)
        assert row.qwk_min == pytest.approx(min(values))
        assert row.qwk_avg == pytest.approx(sum(values) / 3)
        assert row.qwk_max == pytest.approx(max(values))
        assert row.qwk_std == pytest.approx(statistics.stdev(values))  # sample std, n - 1
        # one repetition: the spread over folds is the std, no spread over seeds
        assert row.qwk_sd_folds == pytest.approx(row.qwk_std) and math.isnan(row.qwk_sd_seeds)
    markdown = (sweep / "report.md").read_text()
    assert "Incomplete" not in markdown
    values = QWK["rotation", 0.05]
    assert f"| rotation | 5% | 3/3 | {sum(values) / 3:.3f} ({min(values):.3f} – {max(values):.3f}) |" in markdown
    assert f"{sum(values) / 3:.3f} ± {statistics.stdev(values):.3f} | {statistics.stdev(values):.3f} | n/a (1 seed) |" \
        in markdown
    assert "Expected jobs (multirun.yaml sweep + job configs): 2 arms x 2 fractions x 3 folds x 1 seed(s) (42) x " \
        "1 split seed(s) (42) = 12" in markdown


def test_referable_auroc_beside_qwk_averages_the_runs_that_have_one(tmp_path):
    """A one-sided test fold's AUROC is NaN (null in metrics.json) and runs older than the metric lack it: the
    cell averages the others and says how many; a cell with none says n/a."""
    sweep = make_sweep(tmp_path)
    for fold, auroc in enumerate([0.70, float("nan"), 0.80]):
        edit_metrics(job_dir(sweep, "rotation", 0.05, fold), **{"test__auroc_referable": auroc})
    edit_metrics(job_dir(sweep, "baseline", 0.05, 0), **{"test__auroc_referable": 0.6})
    write_report(sweep)
    table = pd.read_csv(sweep / "report.csv").set_index(["arm", "label_fraction"])
    assert table.loc[("rotation", 0.05), "auroc_referable"] == pytest.approx(0.75)
    assert table.loc[("rotation", 0.05), "auroc_runs"] == 2
    assert table.loc[("baseline", 0.05), "auroc_runs"] == 1 and table.loc[("baseline", 0.1), "auroc_runs"] == 0
    assert math.isnan(table.loc[("baseline", 0.1), "auroc_referable"])
    markdown = (sweep / "report.md").read_text()
    assert "| referable AUROC | collapsed |" in markdown
    rotation_row = next(line for line in markdown.splitlines() if line.startswith("| rotation | 5% | 3/3 |"))
    assert "| 0.750 (2/3) |" in rotation_row
    baseline_row = next(line for line in markdown.splitlines() if line.startswith("| baseline | 10% | 3/3 |"))
    assert "| n/a |" in baseline_row


@pytest.mark.parametrize("num_folds", [5, 10])
def test_paired_difference_corrected_and_naive_ci_by_hand(tmp_path, num_folds):
    """3 of k folds swept: the corrected interval takes k from data.num_folds (n_test/n_train = 1/(k-1)), not
    from the 3 folds present; the naive one is the plain t interval over the 3 differences."""
    sweep = make_sweep(tmp_path, num_folds=num_folds)
    write_report(sweep)
    paired = pd.read_csv(sweep / "report_paired.csv")
    assert list(paired.columns) == ["arm", "baseline", "label_fraction", "pairs", "folds", "num_folds",
                                    "repetitions", "seeds", "split_seeds", "diff_mean", "ci_low", "ci_high",
                                    "naive_ci_low", "naive_ci_high", "partitions", "shared_partition",
                                    "strict_ci_low", "strict_ci_high"]
    # one seed per partition: the repeated k-fold t's assumption holds, no stricter interval is needed
    assert (paired.partitions == 1).all() and not paired.shared_partition.any() and paired.strict_ci_low.isna().all()
    assert len(paired) == 2 and set(paired.arm) == {"rotation"} and set(paired.baseline) == {"baseline"}
    markdown = (sweep / "report.md").read_text()
    assert "## Paired difference: arm minus baseline, same split seed, fold and seed" in markdown
    assert f"k = {num_folds} (data.num_folds)" in markdown and "heuristic correction, not an exact one" in markdown
    assert "test = one fold and training = the other k - 1 folds" in markdown
    # the interval's assumptions beside it: new partitions, and n_test/n_train of the fold sizes
    assert "It assumes (1) that every repetition is a new random partition into k folds" in markdown
    assert (f"so n_test/n_train = 1/(k - 1), with k = {num_folds} (data.num_folds): the ratio of the fold sizes, "
            "not of the labelled images a label fraction's job trains on") in markdown
    assert "is not met" not in markdown and "(stricter)" not in markdown
    assert "| 95% CI (corrected) | 95% CI naive (pairs treated as independent) |" in markdown
    for fraction, label in ((0.05, "5%"), (0.1, "10%")):
        diffs = [r - b for r, b in zip(QWK["rotation", fraction], QWK["baseline", fraction], strict=True)]
        mean = sum(diffs) / 3
        corrected_se = math.sqrt(1 / 3 + 1 / (num_folds - 1)) * statistics.stdev(diffs)
        low, high = stats.t.interval(0.95, df=2, loc=mean, scale=corrected_se)
        naive_low, naive_high = stats.t.interval(0.95, df=2, loc=mean, scale=stats.sem(diffs))
        row = paired[paired.label_fraction == fraction].iloc[0]
        assert row.pairs == 3 and row.folds == "0,1,2" and row.num_folds == num_folds and row.repetitions == 1
        assert row.diff_mean == pytest.approx(mean)
        assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))
        assert (row.naive_ci_low, row.naive_ci_high) == (pytest.approx(naive_low), pytest.approx(naive_high))
        assert low < naive_low and naive_high < high  # the overlap of training sets widens the interval
        assert (f"| rotation | {label} | 3 | 0,1,2 | 1 (seed 42; split seed 42) | {mean:+.3f} | "
                f"[{low:+.3f}, {high:+.3f}] | [{naive_low:+.3f}, {naive_high:+.3f}] |") in markdown


def test_paired_without_num_folds_claims_no_corrected_interval(tmp_path):
    """Job folders with only metrics.json (no Hydra config, so no data.num_folds): the naive interval is still
    shown, the corrected one is left open instead of guessing k."""
    sweep = make_sweep(tmp_path)
    for hydra_dir in sweep.glob("*/.hydra"):
        shutil.rmtree(hydra_dir)
    files = write_report(sweep)
    assert files.paired.num_folds.isna().all() and files.paired.ci_low.isna().all()
    assert files.paired.naive_ci_low.notna().all()
    markdown = files.markdown.read_text()
    assert "k unknown (no data.num_folds in the job configs)" in markdown
    assert "| 0,1,2 | 1 (seed 42; split seed 42) | +0.057 | k unknown | [" in markdown


def test_jobs_of_different_k_are_refused(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    shutil.rmtree(job_dir(sweep, "rotation", 0.1, 2))
    write_job(sweep, 99, "rotation", 0.1, 2, 0.5, num_folds=10)
    assert main([str(sweep)]) == 2
    assert "data.num_folds=5, 10" in capsys.readouterr().err


def test_complete_sweep_plot_and_cli_exit_0(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| rotation | 10% | 3/3 |" in out and str(sweep / "qwk_vs_fraction.png") in out
    png = sweep / "qwk_vs_fraction.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    with Image.open(png) as image:
        assert image.width > 600 and image.height > 400


def test_deleted_job_is_listed_missing_and_exits_1(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    shutil.rmtree(job_dir(sweep, "rotation", 0.1, 1))
    assert main([str(sweep)]) == 1
    captured = capsys.readouterr()
    line = "MISSING: arm=rotation fraction=0.1 fold=1 seed=42 split_seed=42 (no job folder)"
    assert line in captured.out and "incomplete: 1 expected job" in captured.err
    markdown = (sweep / "report.md").read_text()
    assert markdown.index("## Incomplete") < markdown.index(line) < markdown.index("## Test QWK")
    row = pd.read_csv(sweep / "report.csv").set_index(["arm", "label_fraction"]).loc[("rotation", 0.1)]
    assert (row.runs_present, row.runs_expected) == (2, 3)
    values = [QWK["rotation", 0.1][fold] for fold in (0, 2)]
    assert row.qwk_avg == pytest.approx(sum(values) / 2)
    assert "| rotation | 10% | 2/3 **incomplete** |" in markdown
    pair = write_report(sweep).paired.set_index("label_fraction").loc[0.1]
    assert (pair.pairs, pair.folds) == (2, "0,2")  # only folds both arms finished


def test_crashed_job_is_listed_failed_with_last_log_line(tmp_path):
    sweep = make_sweep(tmp_path)
    job = job_dir(sweep, "baseline", 0.05, 2)
    (job / "metrics.json").unlink()
    (job / "train.log").write_text("[INFO] - epoch 1\n[ERROR] - RuntimeError: CUDA out of memory\n\n  \n")
    files = write_report(sweep)
    assert [str(gap) for gap in files.gaps] == [
        f"FAILED: arm=baseline fraction=0.05 fold=2 seed=42 split_seed=42 (job {job.name}: [ERROR] - RuntimeError: "
        "CUDA out of memory)"]
    assert str(files.gaps[0]) in files.markdown.read_text()
    assert files.table.set_index(["arm", "label_fraction"]).loc[("baseline", 0.05)].runs_present == 2


def test_cell_without_any_finished_fold_is_kept(tmp_path):
    sweep = make_sweep(tmp_path)
    for fold in range(3):
        shutil.rmtree(job_dir(sweep, "baseline", 0.1, fold))
    files = write_report(sweep)
    row = files.table.set_index(["arm", "label_fraction"]).loc[("baseline", 0.1)]
    assert row.runs_present == 0 and math.isnan(row.qwk_avg)
    assert len(files.gaps) == 3
    assert files.paired.set_index("label_fraction").loc[0.1].pairs == 0
    assert "| baseline | 10% | 0/3 **incomplete** | no finished run |" in files.markdown.read_text()


@pytest.mark.parametrize("chooser", ["experiment", "arm"])
def test_arm_with_no_job_left_is_still_expected_from_multirun_yaml(tmp_path, chooser):
    sweep = make_sweep(tmp_path, chooser=chooser)
    for fraction, fold in [(f, k) for f in (0.05, 0.1) for k in range(3)]:
        shutil.rmtree(job_dir(sweep, "baseline", fraction, fold))
    results = collect(sweep)
    assert results.arms == ["baseline", "rotation"]
    assert sum(gap.kind == "MISSING" and gap.arm == "baseline" for gap in results.gaps) == 6
    assert set(write_report(sweep).table.query("arm == 'baseline'").runs_present) == {0}


def test_swept_arm_choice_maps_to_the_arm_its_jobs_name(tmp_path):
    """``arm=rot`` (a conf/arm option) whose config says ``arm: rotation`` is one arm, not two."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  sweeper:\n    params:\n      arm: rot\n      data.fold: 0,1\n")
    job = write_job(sweep, 0, "rotation", 1.0, 0, 0.7)
    (job / ".hydra" / "overrides.yaml").write_text("- arm=rot\n- data.fold=0\n")
    results = collect(sweep)
    assert results.arms == ["rotation"]
    assert [str(gap) for gap in results.gaps] == [
        "MISSING: arm=rotation fraction=1 fold=1 seed=42 split_seed=42 (no job folder)"]


def test_command_line_sweep_in_multirun_yaml(tmp_path):
    """``-m data.fold=range(0,3)`` lands in hydra.overrides.task, not in the sweeper params."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  sweeper:\n    params: null\n  overrides:\n    task:\n"
                                         "    - experiment=rotation\n    - data.fold=range(0,3)\n")
    write_job(sweep, 0, "rotation", 1.0, 0, 0.7)
    write_job(sweep, 2, "rotation", 1.0, 2, 0.6)
    results = collect(sweep)
    assert results.folds == [0, 1, 2]
    assert [str(gap) for gap in results.gaps] == [
        "MISSING: arm=rotation fraction=1 fold=1 seed=42 split_seed=42 (no job folder)"]


def test_single_arm_without_baseline_has_no_paired_section(tmp_path):
    sweep = make_sweep(tmp_path, {key: values for key, values in QWK.items() if key[0] == "rotation"})
    files = write_report(sweep, paper_reference=False)
    assert files.paired.empty and files.paired_csv is None and not (sweep / "report_paired.csv").exists()
    assert "Paired" not in files.markdown.read_text() and files.plot.stat().st_size > 10_000


def test_one_fold_has_no_std_and_no_interval(tmp_path):
    sweep = make_sweep(tmp_path, {("baseline", 0.05): [0.2], ("rotation", 0.05): [0.3]})
    files = write_report(sweep)
    assert files.table.qwk_std.isna().all()
    markdown = files.markdown.read_text()
    assert "0.300 ± n/a (1 run) | n/a (1 fold) | n/a (1 seed) |" in markdown
    assert "| rotation | 5% | 1 | 0 | 1 (seed 42; split seed 42) | +0.100 | n=1: no interval |" in markdown


@pytest.mark.parametrize("content", ["{not json", '{"arm": "rotation", "test/q', '{"arm": "rotation"}'])
def test_unreadable_or_partial_metrics_json_is_a_failed_job(tmp_path, capsys, content):
    """A half-written or broken metrics.json fails that one job, named, not the whole report."""
    sweep = make_sweep(tmp_path)
    bad = job_dir(sweep, "rotation", 0.05, 0) / "metrics.json"
    bad.write_text(content)
    assert main([str(sweep)]) == 1  # incomplete, not bad input
    captured = capsys.readouterr()
    assert "FAILED: arm=rotation fraction=0.05 fold=0" in captured.out
    assert "unreadable metrics.json" in captured.out and "Traceback" not in captured.err


@pytest.mark.parametrize("case", ["does_not_exist", "empty"])
def test_cli_bad_folder_exits_2_without_traceback(tmp_path, case):
    folder = tmp_path / case
    if case == "empty":
        folder.mkdir()
    result = cli(folder)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith(f"error: {folder}")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_every_arm_of_a_paper_arm_list_is_reported_and_paired_with_baseline(tmp_path):
    """experiment=paper 'arms=[...]': multirun.yaml keeps ``arm: ${ssl_dr.sweep_values:${arms}}`` unresolved;
    the report resolves it, so an arm whose jobs all vanished is still expected, and every arm is shown."""
    arms = ["rotation", "jigsaw", "simclr", "imagenet", "baseline"]
    qwk = {(arm, f): [0.1 * i + f, 0.1 * i + f + 0.02] for i, arm in enumerate(arms) for f in (0.1, 1.0)}
    sweep = make_sweep(tmp_path, qwk, chooser="arm")
    text = (sweep / "multirun.yaml").read_text().replace(f"arm: {','.join(arms)}",
                                                         "arm: ${ssl_dr.sweep_values:${arms}}")
    assert "sweep_values" in text
    (sweep / "multirun.yaml").write_text(text + f"arms: [{', '.join(arms)}]\n")
    for fraction, fold in [(f, k) for f in (0.1, 1.0) for k in range(2)]:
        shutil.rmtree(job_dir(sweep, "simclr", fraction, fold))
    files = write_report(sweep, paper_reference=False)
    assert sorted(files.table.arm.unique()) == sorted(arms)
    assert sum(gap.arm == "simclr" for gap in files.gaps) == 4
    assert sorted(files.paired.arm.unique()) == sorted(set(arms) - {"baseline"})
    markdown = files.markdown.read_text()
    assert all(f"| {arm} |" in markdown for arm in arms)
    finished = files.paired.dropna(subset=["diff_mean"])
    assert set(finished.arm) == {"rotation", "jigsaw", "imagenet"}  # simclr has no fold to pair
    assert finished.set_index(["arm", "label_fraction"]).loc[("rotation", 1.0), "diff_mean"] == pytest.approx(-0.4)


def test_sweep_without_any_finished_job_is_still_reported(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    for metrics in sweep.glob("*/metrics.json"):
        metrics.unlink()
    assert main([str(sweep)]) == 1
    markdown = (sweep / "report.md").read_text()
    assert "| baseline | 5% | 0/3 **incomplete** | no finished run | - | - | - | - |" in markdown
    assert "| rotation | 10% |  |  |  |  |  |  |  |" in markdown
    assert "| rotation | 5% | 0 | - | - | - | no run finished in both arms | - |" in markdown


def test_report_names_the_jobs_environments_and_warns_when_a_sweep_mixes_them(tmp_path):
    from tests.reporting.test_environments import HERE, THERE

    sweep = make_sweep(tmp_path)
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    for job in jobs:
        (job / "environment.json").write_text(json.dumps(HERE))
    report = write_report(sweep).markdown.read_text()
    assert f"- {HERE['summary']} ({len(jobs)} jobs" in report and "WARNING: this sweep mixes" not in report
    (jobs[0] / "environment.json").write_text(json.dumps(THERE))
    report = write_report(sweep).markdown.read_text()
    assert "WARNING: this sweep mixes 2 environments" in report and "packages.torch" in report
