"""``python -m ssl_dr.wandb_sync <folder>``: make the offline W&B runs under a copied or moved run, sweep or
outputs folder uploadable from where they are now, then print the ``wandb sync`` command that uploads them.

W&B's records name the tables' and images' staged files by absolute path; each run folder holds those files in
its ``wandb/`` folder, and this points the records at them (``ssl_dr.training.wandb_offline``). Parts killed
before W&B wrote to them are named and left out of the command (``wandb sync`` stops at them). Running it
again changes nothing. Exit status 0 when every run is ready, 2 on bad input.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ssl_dr.training.wandb_offline import OfflineRunError, holds_records, relocate


def main(argv: list[str] | None = None) -> int:
    """CLI: relocate every ``offline-run-*`` under the folder, print what changed and the upload command."""
    parser = argparse.ArgumentParser(prog="python -m ssl_dr.wandb_sync", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run, sweep or outputs folder holding wandb/offline-run-* folders")
    args = parser.parse_args(argv)
    runs = offline_runs(args.folder)
    if not runs:
        print(f"error: no wandb/offline-run-* folder under {args.folder}; name the folder a run with "
              "logger=wandb wrote (its run folder, its sweep folder or outputs/)", file=sys.stderr)
        return 2
    ready = []
    try:
        for run in runs:
            if not holds_records(run):
                print(f"left out (killed before W&B wrote to it): {run}")
                continue
            done = relocate(run)
            print(f"{run}: {done.moved} staged file path(s) pointed at this copy, {done.in_place} already in place")
            ready.append(run)
    except OfflineRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("upload with:", shlex.join(["wandb", "sync", *map(str, ready)]))
    return 0


def offline_runs(folder: Path) -> list[Path]:
    """The ``offline-run-*`` folders at or under ``folder``, in the order they started (their names begin with it)."""
    if folder.name.startswith("offline-run-") and folder.is_dir():
        return [folder]
    runs = [p for p in folder.rglob("offline-run-*") if p.is_dir()] if folder.is_dir() else []
    return sorted(runs, key=lambda p: (p.name, str(p)))


if __name__ == "__main__":
    sys.exit(main())
