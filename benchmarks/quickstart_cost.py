"""What a change costs the quick start: ``python -m ssl_dr.train experiment=rotation`` timed with this checkout
and with a baseline checkout of the project, in the same session, alternating, each run in a fresh folder
(data generation, image cache and pretext included, as a newcomer runs it).

The DESIGN bound is 3 minutes on 2 cores; the W&B issue bounds what its per-grade figures, extra
validation pass and media may cost the quick start (under 5 %). Prints each run's wall time and test QWK
(the two checkouts should agree on the number unless the change meant to move it) and the ratio of the
medians, this checkout over the baseline.

    git worktree add /tmp/ssl_dr-base <commit>
    python benchmarks/quickstart_cost.py --baseline /tmp/ssl_dr-base --repeats 2
    python benchmarks/quickstart_cost.py --baseline . --this-override scale.channels_last=true   # a setting's cost
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def quick_start(tree: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and test QWK of one quick start run with the code of ``tree``, in a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="quickstart-") as cwd:
        env = {**os.environ, "PYTHONPATH": str(tree), "WANDB_SILENT": "true"}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=rotation", *extra], cwd=cwd, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"quick start with {tree} failed:\n{done.stderr[-3000:]}")
        (metrics,) = Path(cwd).glob("outputs/rotation/runs/*/metrics.json")
        return seconds, json.loads(metrics.read_text())["test/qwk"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of the project")
    parser.add_argument("--repeats", type=int, default=1, help="runs per checkout (alternating)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for both (e.g. logger=csv)")
    parser.add_argument("--this-override", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for this checkout's runs only (repeatable): what a setting costs or saves")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"baseline": [], "this": []}
    for repeat in range(args.repeats):
        for name, tree in (("baseline", args.baseline.resolve()), ("this", HERE)):
            own = args.this_override if name == "this" else []
            seconds, qwk = quick_start(tree, args.overrides + own)
            times[name].append(seconds)
            print(f"run {repeat + 1} {name:8s} {seconds:6.1f} s  test/qwk {qwk:.4f}  ({' '.join([str(tree), *own])})",
                  flush=True)
    base, this = statistics.median(times["baseline"]), statistics.median(times["this"])
    print(f"median: baseline {base:.1f} s, this checkout {this:.1f} s; ratio {this / base:.3f} "
          f"({(this / base - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
