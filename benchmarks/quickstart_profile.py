"""Where the quick start's wall time goes: ``python -m ssl_dr.train experiment=rotation`` run once in a fresh folder
(data generation, image cache and pretext included, as a newcomer runs it) and cut into phases.

The phases come from what the run records anyway: ``train.log``'s timestamps (the run's own lines), the mtimes of
the generated dataset's ``generator.json`` and the image cache's ``index.json``, each W&B run's ``logs/debug.log``
(init start, "run started", "finishing run") and ``python -X importtime``. Inside each Lightning stage (fit,
validate, test) ``PhaseClock``, a callback this script adds with a Hydra override (never in a normal run), logs
when the stage starts and ends and how long its training steps and validations took. Rows between two marks
hold everything in between (a row named "a + b" when a mark in between is missing); they add up to the wall time.

    python benchmarks/quickstart_profile.py [--tree CHECKOUT] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

HERE = Path(__file__).resolve().parents[1]
CLOCK = "clock"
"""First word of ``PhaseClock``'s lines in ``train.log``."""
FINETUNE_MODULE = "DRClassifier"
"""The grader's LightningModule; any other module's stages are the pretext's."""
log = logging.getLogger(__name__)


class PhaseClock(Callback):
    """Logs ``clock <module> <stage> start`` when a Lightning stage sets up and, at its teardown,
    ``clock <module> <stage> end train_batches=.. train_s=.. val_passes=.. val_s=..``. Reads clocks only: no
    random number, no state in checkpoints, so the run's numbers are those of a run without it."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._totals = {"train_batches": 0, "train_s": 0.0, "val_passes": 0, "val_s": 0.0}

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._totals = {k: type(v)() for k, v in self._totals.items()}
        log.info("%s %s %s start", CLOCK, type(pl_module).__name__, _name(stage))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        counts = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in self._totals.items())
        log.info("%s %s %s end %s", CLOCK, type(pl_module).__name__, _name(stage), counts)

    def _stop(self, what: str) -> None:
        self._totals[f"{what}_s"] += time.perf_counter() - self._started.pop(what)

    def on_train_batch_start(self, *args: Any) -> None:
        self._started["train"] = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self._stop("train")
        self._totals["train_batches"] += 1

    def on_validation_start(self, *args: Any) -> None:
        self._started["val"] = time.perf_counter()

    def on_validation_end(self, *args: Any) -> None:
        self._stop("val")
        self._totals["val_passes"] += 1


def _name(stage: Any) -> str:
    """``fit``, ``validate``, ``test``: Lightning passes a ``TrainerFn`` (a str enum, printed TrainerFn.FITTING)."""
    return str(getattr(stage, "value", stage))


@dataclass
class LogLine:
    time: float  # seconds since the epoch
    logger: str
    message: str


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]\[([^\]]+)\]\[\w+\] - (.*)$")
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \| *(\S+)")
WANDB_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def _epoch(stamp: str, millis: str) -> float:
    """A local-time log stamp (``logging``'s asctime, W&B's debug.log) as seconds since the epoch."""
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def read_log(text: str) -> list[LogLine]:
    """The records of a ``train.log`` (``conf/hydra/default.yaml``'s file format); continuation lines skipped."""
    lines = []
    for line in text.splitlines():
        if match := LOG_LINE.match(line):
            lines.append(LogLine(_epoch(match[1], match[2]), match[3], match[4]))
    return lines


def import_times(stderr: str) -> tuple[float, list[tuple[str, float]]]:
    """Seconds spent importing in the whole process (``-X importtime``), and per package: the self times of
    every module whose name starts with it, wherever it was imported from, largest first."""
    packages: dict[str, float] = {}
    for line in stderr.splitlines():
        if match := IMPORT_LINE.match(line):
            package = match[2].split(".")[0]
            packages[package] = packages.get(package, 0.0) + int(match[1]) / 1e6
    return sum(packages.values()), sorted(packages.items(), key=lambda kv: -kv[1])


def wandb_marks(text: str) -> dict[str, float]:
    """``init``, ``ready`` and ``finish`` times of one W&B run from its ``logs/debug.log``: the log's first line
    (wandb.init begins), "run started, returning control" and "finishing run"."""
    marks: dict[str, float] = {}
    for line in text.splitlines():
        match = WANDB_LINE.match(line)
        if not match:
            continue
        when = _epoch(match[1], match[2])
        marks.setdefault("init", when)
        if "run started, returning control" in line:
            marks["ready"] = when
        elif "finishing run" in line:
            marks["finish"] = when
    return marks


CLOCK_LINE = re.compile(rf"^{CLOCK} (\w+) (\w+) (start|end)(.*)$")
MARKS = (  # (mark, what the time from the previous mark to this one was spent on)
    ("first_line", "interpreter, imports, Hydra config, checks"),
    ("data_written", "synthetic data generation"),
    ("split", "read records, folds, split"),
    ("cache_built", "image cache build"),
    ("pretext_wandb_init", "pretext: model, store key"),
    ("pretext_wandb_ready", "pretext: W&B init"),
    ("pretext_fit_start", "pretext: Trainer setup"),
    ("pretext_fit_end", "pretext: fit"),
    ("pretext_wandb_finish", "pretext: W&B media (example grid)"),
    ("pretext_saved", "pretext: W&B finish, weights saved"),
    ("finetune_wandb_init", "fine-tune: model, pretext weights loaded"),
    ("finetune_wandb_ready", "fine-tune: W&B init"),
    ("finetune_fit_start", "fine-tune: Trainer setup"),
    ("finetune_fit_end", "fine-tune: fit"),
    ("finetune_validate_end", "extra validation pass (tested checkpoint)"),
    ("finetune_test_end", "test (and test_predictions.csv)"),
    ("finetune_wandb_finish", "W&B confusion plots, summary, predictions table + Grad-CAM"),
    ("tested_line", "fine-tune: W&B finish"),
    ("done_line", "environment.json, metrics.json"),
    ("end", "interpreter exit"),
)


def log_marks(lines: list[LogLine]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Marks read off ``train.log`` and, per fit (``pretext``/``finetune``), the clock's counts at its end."""
    marks: dict[str, float] = {}
    fits: dict[str, dict[str, float]] = {}
    if lines:
        marks["first_line"] = lines[0].time
    for line in lines:
        if line.message.startswith("split ("):
            marks["split"] = line.time
        elif re.match(r"pretext \w+: held-out", line.message):
            marks["pretext_saved"] = line.time
        elif line.message.startswith("tested the checkpoint"):
            marks["tested_line"] = line.time
        elif line.message.startswith("done:"):
            marks["done_line"] = line.time
        elif match := CLOCK_LINE.match(line.message):
            phase = "finetune" if match[1] == FINETUNE_MODULE else "pretext"
            marks[f"{phase}_{match[2]}_{match[3]}"] = line.time
            if match[2] == "fit" and match[3] == "end":
                fits[phase] = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", match[4])}
    return marks, fits


def run_marks(run_dir: Path, data_root: Path, cache_root: Path) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Every mark of one finished run: its ``train.log``, its W&B runs' debug logs, its data and cache files."""
    marks, fits = log_marks(read_log((run_dir / "train.log").read_text()))
    for name, when in (("data_written", data_root.glob("*/generator.json")),
                       ("cache_built", cache_root.glob("images/*/index.json"))):
        times = [p.stat().st_mtime for p in when]
        if times:
            marks[name] = max(times)
    for debug_log in run_dir.glob("wandb/offline-run-*/logs/debug.log"):
        phase = "pretext" if "-pretext-" in debug_log.parent.parent.name else "finetune"
        for key, when in wandb_marks(debug_log.read_text()).items():
            marks[f"{phase}_wandb_{key}"] = when
    return marks, fits


def profile_rows(marks: dict[str, float], fits: dict[str, dict[str, float]]) -> list[tuple[str, float]]:
    """(phase, seconds) from ``start`` to ``end`` in ``MARKS`` order; each fit is followed by its training steps,
    validations and the rest (data loading, checkpoints, metric logging) as indented rows (not added again)."""
    rows: list[tuple[str, float]] = []
    previous, skipped = marks["start"], []
    for mark, label in MARKS:
        if mark not in marks or marks[mark] < previous:  # absent (no W&B, data reused) or out of order
            skipped.append(label)
            continue
        seconds = marks[mark] - previous
        rows.append((" + ".join([*skipped, label]), seconds))
        previous, skipped = marks[mark], []
        phase = mark.removesuffix("_fit_end")
        if phase != mark and phase in fits:
            counts = fits[phase]
            rows.append((f"  of which {counts['train_batches']:.0f} training steps", counts["train_s"]))
            rows.append((f"  of which {counts['val_passes']:.0f} validations", counts["val_s"]))
            rows.append(("  of which the rest (loading, checkpoints, logging)",
                         seconds - counts["train_s"] - counts["val_s"]))
    return rows


def table(rows: list[tuple[str, float]], total: float, imports: tuple[float, list[tuple[str, float]]]) -> str:
    """A Markdown table of the rows with their share of ``total``, and the imports (whole process) below it."""
    out = ["| phase | seconds | % |", "| --- | ---: | ---: |"]
    out += [f"| {name} | {seconds:.1f} | {100 * seconds / total:.1f} |" for name, seconds in rows]
    out.append(f"| **total (wall)** | **{total:.1f}** | 100 |")
    seconds, packages = imports
    if seconds:
        top = ", ".join(f"{name} {s:.1f}" for name, s in packages[:8])
        out.append(f"\nimports, whole process (`-X importtime`, all phases): {seconds:.1f} s; by package: {top}")
    return "\n".join(out)


def profile(tree: Path, overrides: list[str]) -> tuple[str, dict[str, Any]]:
    """Run the quick start of ``tree`` once in a fresh folder; return the table and the run's metrics.json."""
    with tempfile.TemporaryDirectory(prefix="quickstart-profile-") as cwd:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(Path(__file__).parent)]),
               "WANDB_SILENT": "true"}
        command = [sys.executable, "-X", "importtime", "-m", "ssl_dr.train", "experiment=rotation",
                   f"+callbacks.phase_clock._target_={Path(__file__).stem}.PhaseClock", *overrides]
        start = time.time()
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        end = time.time()
        if done.returncode != 0:
            raise SystemExit(f"quick start with {tree} failed:\n{done.stderr[-3000:]}")
        (metrics_path,) = Path(cwd).glob("outputs/*/runs/*/metrics.json")
        marks, fits = run_marks(metrics_path.parent, Path(cwd) / "data", Path(cwd) / "cache")
        marks.update(start=start, end=end)
        rows = profile_rows(marks, fits)
        return table(rows, end - start, import_times(done.stderr)), json.loads(metrics_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=HERE, help="checkout whose code runs (default: this one)")
    parser.add_argument("overrides", nargs="*", help="extra overrides (e.g. logger=csv)")
    args = parser.parse_args()
    text, metrics = profile(args.tree.resolve(), args.overrides)
    print(f"python -m ssl_dr.train experiment=rotation {' '.join(args.overrides)}  ({args.tree.resolve()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end)")
    print(text)
    print(f"\ntest/qwk {metrics.get('test/qwk', float('nan')):.4f}, val/qwk_best {metrics.get('val/qwk_best'):.4f}, "
          f"best/step {metrics.get('best/step')}")


if __name__ == "__main__":
    main()
