"""A sweep folder's jobs: who each one is, what it scored, and which expected jobs have no result.

Why apart from ``ssl_dr.report``: the command writes the files; this is the reading, and the rule it
enforces. A job is identified by arm x protocol x label fraction x fold x seed x split seed: ``protocol``
(``finetune``, the default, or a frozen-feature probe), ``seed`` (initialisation, augmentation, the pretext) and
``data.split_seed`` (the k-fold partition) are sweep axes like the others, so ``experiment=paper_cpu
seed=42,43,44`` repeats the whole table. Only two jobs equal in all six keys are refused (one cell cannot hold
two results). Every expected job (arm x protocol x fraction x fold x repetition, from the values swept in
``multirun.yaml`` and those the job configs name) without a finished result becomes a ``Gap``,
named at the top of the report: a crashed or deleted job must never turn quietly into an average over fewer
runs. A repetition is a (seed, split seed) pair: every combination of the two, or, where the jobs' configs
set ``data.split_seed: ${seed}`` (experiment=paper / paper_cpu), one partition per seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ssl_dr.errors import UserError
from ssl_dr.launch.folders import JOB_FAILED
from ssl_dr.launch.resolvers import register_resolvers
from ssl_dr.reporting import stats as report_stats
from ssl_dr.reporting.external import external_facts
from ssl_dr.reporting.identity import describe
from ssl_dr.reporting.screening import screening_facts
from ssl_dr.run_contract import FINETUNE, METRICS, TEST_PREDICTIONS, TRAIN_LOG, JobIdentity

FINISHED, FAILED, UNFINISHED = "finished", "failed", "unfinished"
FAILURE_MARKS = (JOB_FAILED, "[ERROR]")
"""What ``ssl_dr.train`` writes to a job's log when the job fails inside a sweep (logged at ERROR level);
a job folder without ``metrics.json`` and without either mark is UNFINISHED: still running (a report made
while the sweep runs) or killed mid-job, and ``resume=last`` continues it."""
# what identifies a job (its name in metrics.json) -> the config key / sweep override key that sets it
CONFIG_KEYS = {name: key for name, key in JobIdentity.CONFIG_KEYS.items() if name != "protocol"}
# the protocol is read apart: its config key (protocol.name) is not its sweep key (the `protocol` config group)
IDENTITY = ("arm", "protocol", "label_fraction", "fold", "seed", "split_seed")
PROTOCOL_KEY, PROTOCOL_CHOOSER = "protocol.name", "protocol"
# a job config's data.split_seed when the experiment ties the partition to the seed (one repetition = both)
SPLIT_FOLLOWS_SEED = "${seed}"
# overrides that choose the arm by a name (the `arm` and `experiment` config groups): name -> arm via job configs
ARM_CHOOSERS = ("arm", "experiment")
CHOOSERS = (*ARM_CHOOSERS, PROTOCOL_CHOOSER)  # the config-group overrides a job's `choices` keep


class ReportError(UserError, ValueError):
    """The sweep folder cannot be reported on (missing, no jobs, a malformed file); the message says what to do."""


@dataclass(frozen=True)
class Gap:
    """An expected job (arm x protocol x fraction x fold x seed x split seed) without a finished result."""

    kind: str  # MISSING (no job folder) | FAILED (an error logged, or an unusable metrics.json) | UNFINISHED
    arm: str
    label_fraction: float
    fold: int
    seed: int
    split_seed: int
    reason: str
    protocol: str = FINETUNE

    def __str__(self) -> str:
        who = describe(self.arm, self.label_fraction, self.fold, self.seed, self.split_seed, self.protocol)
        return f"{self.kind}: {who} ({self.reason})"


@dataclass
class SweepResults:
    """Per-job rows (``job``, the IDENTITY keys, ``num_folds, choices, status, test_qwk, reason`` and the
    ``report_stats.job_facts``, ``external_facts`` and ``screening_facts``), the expected value sets and
    repetitions (the report covers arms x protocols x fractions x folds x repetitions), the expected jobs without
    a result and the sweep's k (None when no job config names it)."""

    sweep_dir: Path
    jobs: pd.DataFrame
    arms: list[str]
    fractions: list[float]
    folds: list[int]
    seeds: list[int]
    split_seeds: list[int]
    gaps: list[Gap]
    expected_from: str
    num_folds: int | None = None
    repetitions: list[tuple[int, int]] = field(default_factory=list)
    """(seed, split seed) of each expected repetition (one whole k-fold cross-validation)."""
    protocols: list[str] = field(default_factory=lambda: [FINETUNE])

    @property
    def finished(self) -> pd.DataFrame:
        return self.jobs[self.jobs.status == FINISHED]

    @property
    def runs_per_cell(self) -> int:
        """Jobs expected per arm x protocol x fraction: one per fold and repetition."""
        return len(self.folds) * len(self.repetitions)


FOLDS_FILE = "folds_file"
"""The metrics.json key naming the job's fold assignment file (``folds-k<k>-seed<split seed>-<data hash>.csv``)."""


# ---------------------------------------------------------------- one job folder


def _fraction(value: object) -> float:
    return round(float(value), 6)  # 0.1 from a config and "0.10" from multirun.yaml are one fraction


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders (those with a Hydra config or a metrics.json), in Hydra's numbering."""
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such folder; give a Hydra multirun folder "
                          "(outputs/<arm>/multiruns/<stamp>)")
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra/config.yaml").is_file() or (d / METRICS).is_file()]
    if not dirs:
        hint = " (this is a single run's folder, not a sweep)" if (sweep_dir / ".hydra").is_dir() else ""
        raise ReportError(f"{sweep_dir}: no job folders (<job>/.hydra/config.yaml or <job>/metrics.json){hint}; "
                          "pass the multirun folder that holds the numbered job folders")
    return sorted(dirs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def _read_metrics(path: Path) -> tuple[dict | None, str | None]:
    """The job's metrics, or why there are none: a missing, unreadable or partial ``metrics.json`` makes the job
    FAILED (named in the report) instead of ending the report."""
    if not path.is_file():
        return None, None
    try:
        metrics = json.loads(path.read_text())
        metrics["test/qwk"] = float(metrics["test/qwk"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, (f"unreadable metrics.json ({type(err).__name__}: {err}); re-run the job (resume=last "
                      "re-runs it) or delete its folder")
    return metrics, None


def _read_identity(job_dir: Path, metrics: dict | None) -> dict:
    """The IDENTITY keys of a job from its Hydra config (there even if it crashed), else from metrics.json (a
    protocol in neither: ``finetune``, older jobs); ``choices``: its overrides of CHOOSERS (``{"experiment":
    "rotation", "protocol": "linear"}``); ``num_folds``: the k of its k-fold
    split (``data.num_folds``; None without a config), which sizes the corrected interval; ``split_follows_seed``:
    its config sets ``data.split_seed: ${seed}`` (its partition changes with its seed)."""
    path, overrides = job_dir / ".hydra" / "config.yaml", job_dir / ".hydra" / "overrides.yaml"
    try:
        if path.is_file():
            cfg = OmegaConf.load(path)
            values = {name: OmegaConf.select(cfg, key) for name, key in CONFIG_KEYS.items()}
            num_folds = OmegaConf.select(cfg, "data.num_folds")
            follows = _split_follows_seed(cfg)
            protocol = OmegaConf.select(cfg, PROTOCOL_KEY)
        else:
            values, num_folds, follows = {name: metrics.get(name) for name in CONFIG_KEYS}, None, False
            protocol = None
        protocol = protocol or (metrics or {}).get("protocol") or FINETUNE
        if None in values.values():
            raise KeyError(f"needs {', '.join(CONFIG_KEYS.values())}")
        lines = OmegaConf.to_container(OmegaConf.load(overrides)) if overrides.is_file() else []
        pairs = [line.split("=", 1) for line in lines if "=" in line]
        return {"arm": str(values["arm"]), "protocol": str(protocol),
                "label_fraction": _fraction(values["label_fraction"]),
                **{name: int(values[name]) for name in ("fold", "seed", "split_seed")},
                "num_folds": None if num_folds is None else int(num_folds), "split_follows_seed": follows,
                "choices": {key.lstrip("+~"): value for key, value in pairs if key.lstrip("+~") in CHOOSERS}}
    except Exception as err:  # yaml / omegaconf / conversion errors all mean: not a readable ssl_dr job
        source = path if path.is_file() else job_dir / METRICS
        raise ReportError(f"{source}: cannot read the job's arm, fraction, fold, seed and split seed "
                          f"({type(err).__name__}: {err}); is this an ssl_dr sweep? Delete the job folder to have "
                          "it reported as missing") from None


def _split_follows_seed(cfg: DictConfig) -> bool:
    """Whether a saved (unresolved) config sets ``data.split_seed: ${seed}``."""
    data = cfg.get("data")
    return isinstance(data, DictConfig) and OmegaConf.to_container(data).get("split_seed") == SPLIT_FOLLOWS_SEED


def _job_log(job_dir: Path) -> list[str]:
    """The non-blank lines of the job's log (``train.log``, else its newest ``*.log``)."""
    logs = sorted(job_dir.glob("*.log"), key=lambda p: (p.name == TRAIN_LOG, p.stat().st_mtime))
    return [line.strip() for line in logs[-1].read_text(errors="replace").splitlines() if line.strip()] if logs else []


def _folds_name(metrics: dict | None) -> str | None:
    """The name of the job's folds file (k, split seed and a fingerprint of the labelled data): which data and split
    its fold numbers index, wherever the cache that held it was."""
    value = (metrics or {}).get(FOLDS_FILE)
    return Path(value).name if value else None


def _read_job(job_dir: Path) -> dict:
    metrics, unreadable = _read_metrics(job_dir / METRICS)
    row = {"job": job_dir.name, **_read_identity(job_dir, metrics), "status": FAILED, "test_qwk": math.nan,
           **report_stats.job_facts(metrics, job_dir / TEST_PREDICTIONS), **external_facts(metrics, job_dir),
           **screening_facts(metrics),
           "wandb_run_id": (metrics or {}).get("wandb/run_id"),  # its fine-tune's W&B run (None: older runs)
           "folds_file": _folds_name(metrics)}
    if unreadable:
        row["reason"] = unreadable
    elif metrics is None:
        lines = _job_log(job_dir)
        if any(mark in line for line in lines for mark in FAILURE_MARKS):
            row["reason"] = lines[-1][:300]
        else:
            last = f"; its log ends: {lines[-1][:200]}" if lines else ""
            row.update(status=UNFINISHED, reason="no metrics.json and no error logged: still running, or stopped "
                                                 f"mid-job (resume=last continues it){last}")
    elif not math.isfinite(metrics["test/qwk"]):
        row["reason"] = f"test/qwk is {metrics['test/qwk']} in metrics.json"
    else:
        row.update(status=FINISHED, test_qwk=metrics["test/qwk"], reason="")
    return row


# ---------------------------------------------------------------- what the sweep expected


def _swept_values(sweep_dir: Path) -> tuple[dict[str, list[str]], str, bool]:
    """Override key -> values, from multirun.yaml's ``hydra.sweeper.params`` and command-line overrides; and
    whether multirun.yaml's config ties ``data.split_seed`` to ``seed`` (kept even when overridden)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}, "job configs only: no multirun.yaml", False
    try:
        cfg = OmegaConf.load(path)
        follows = _split_follows_seed(cfg)
        params = _sweeper_params(OmegaConf.select(cfg, "hydra.sweeper.params") or OmegaConf.create({}))
        overrides = [f"{key}={value}" for key, value in params.items()]
        overrides += OmegaConf.to_container(OmegaConf.select(cfg, "hydra.overrides.task") or OmegaConf.create([]))
    except Exception as err:  # an unreadable multirun.yaml only narrows what is expected
        return {}, f"job configs only (multirun.yaml unreadable: {type(err).__name__})", False
    swept: dict[str, list[str]] = {}
    parser = OverridesParser.create()
    for text in overrides:  # later overrides win, as in Hydra (command line over sweeper params)
        try:
            override = parser.parse_override(text)
            values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                      else [str(override.value())])
        except Exception:  # non-discrete sweeps (interval, glob) expect nothing specific
            continue
        swept[override.key_or_group] = values
    return swept, "multirun.yaml sweep + job configs", follows


def _sweeper_params(params: DictConfig) -> dict:
    """``hydra.sweeper.params`` as the sweeper saw them: multirun.yaml keeps interpolations such as
    ``arm: ${ssl_dr.sweep_values:${arms}}`` (experiment=paper) unresolved, so resolve them against the file."""
    register_resolvers()
    try:
        return OmegaConf.to_container(params, resolve=True)
    except Exception:  # an interpolation that needs the live run (e.g. ${hydra:...}): keep the text
        return OmegaConf.to_container(params)


def _converted(values: list[str], convert: Callable[[str], object]) -> set:
    try:
        return {convert(value) for value in values}
    except ValueError:  # a swept value that is no number (an interpolation, ...) expects nothing specific
        return set()


def _expected(jobs: pd.DataFrame, swept: dict[str, list[str]], follows: bool) -> dict[str, list]:
    """IDENTITY key -> expected values: swept values UNION values seen in the job configs. A swept ``arm=<name>``
    or ``experiment=<name>`` counts as the arm its jobs' configs name, ``protocol=<name>`` as their protocol;
    with no job left to tell, as the arm or protocol ``<name>``. ``repetition``: the expected (seed, split seed)
    pairs: those seen, and every seed x split seed, or, when the split seed follows the seed, one per seed:
    ``follows`` from multirun.yaml or any job config says so and the command line sets no other split seed, or
    the command line sets ``data.split_seed='${seed}'``."""
    to_arm = {(key, name): job.arm for job in jobs.itertuples() for key, name in job.choices.items()}
    expected = {"arm": set(jobs.arm) | {to_arm.get((key, name), name) for key in ARM_CHOOSERS
                                        for name in swept.get(key, [])}}
    to_protocol = {name: job.protocol for job in jobs.itertuples() for key, name in job.choices.items()
                   if key == PROTOCOL_CHOOSER}
    expected["protocol"] = set(jobs.protocol) | {to_protocol.get(name, name)
                                                 for name in swept.get(PROTOCOL_CHOOSER, [])}
    numbers = {"label_fraction": _fraction, "fold": int, "seed": int, "split_seed": int}
    for name, convert in numbers.items():
        expected[name] = set(jobs[name]) | _converted(swept.get(CONFIG_KEYS[name], []), convert)
    on_line = swept.get(CONFIG_KEYS["split_seed"])  # data.split_seed='${seed}' on the command line ties them too
    tied = on_line == [SPLIT_FOLLOWS_SEED] or (on_line is None and (follows or bool(jobs.split_follows_seed.any())))
    repetitions = set(zip(jobs.seed, jobs.split_seed, strict=True)) | (
        {(seed, seed) for seed in expected["seed"]} if tied else set(product(expected["seed"], expected["split_seed"])))
    expected["split_seed"] |= {split_seed for _, split_seed in repetitions}
    return {**{name: sorted(expected[name]) for name in IDENTITY}, "repetition": sorted(repetitions)}


def _check_unique(jobs: pd.DataFrame, sweep_dir: Path) -> None:
    """Two jobs equal in every IDENTITY key would be one cell with two results: refuse, say which."""
    dup = jobs[jobs.duplicated(list(IDENTITY), keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        same = (dup[list(IDENTITY)] == first[list(IDENTITY)]).all(axis=1)
        raise ReportError(f"{sweep_dir}: jobs {', '.join(dup[same].job)} are all "
                          f"{describe(**{name: first[name] for name in IDENTITY})}; the report groups by arm x "
                          "fraction x fold x seed x split seed x protocol, so give each swept setting its own arm "
                          "(e.g. arm=rotation_lr1e-3)")


def _num_folds(jobs: pd.DataFrame, sweep_dir: Path) -> int | None:
    """The one k of the sweep's k-fold split: fold numbers of different splits are different test sets, so
    pairing or averaging them would compare nothing."""
    ks = sorted({int(k) for k in jobs.num_folds.dropna()})
    if len(ks) > 1:
        raise ReportError(f"{sweep_dir}: jobs use data.num_folds={', '.join(map(str, ks))}; folds of different "
                          "splits cannot be paired or averaged, so report each k from a sweep of its own")
    return ks[0] if ks else None


def _gaps(jobs: pd.DataFrame, expected: dict[str, list]) -> list[Gap]:
    by_key = {tuple(getattr(job, name) for name in IDENTITY): job for job in jobs.itertuples()}
    gaps = []
    for *cell, (seed, split_seed) in product(*(expected[name] for name in IDENTITY[:4]), expected["repetition"]):
        key = dict(zip(IDENTITY, (*cell, seed, split_seed), strict=True))
        job = by_key.get(tuple(key.values()))
        if job is None:
            gaps.append(Gap("MISSING", reason="no job folder", **key))
        elif job.status != FINISHED:
            gaps.append(Gap(job.status.upper(), reason=f"job {job.job}: {job.reason}", **key))
    return gaps


def collect(sweep_dir: Path) -> SweepResults:
    """Read every job of a Hydra multirun folder; list the expected jobs that have no finished result."""
    sweep_dir = Path(sweep_dir)
    jobs = pd.DataFrame([_read_job(job_dir) for job_dir in job_dirs(sweep_dir)])
    _check_unique(jobs, sweep_dir)
    num_folds = _num_folds(jobs, sweep_dir)
    swept, expected_from, follows = _swept_values(sweep_dir)
    expected = _expected(jobs, swept, follows)
    return SweepResults(sweep_dir, jobs, expected["arm"], expected["label_fraction"], expected["fold"],
                        expected["seed"], expected["split_seed"], _gaps(jobs, expected), expected_from, num_folds,
                        expected["repetition"], expected["protocol"])
