"""``python -m ssl_dr.report <sweep_dir> [--no-paper-reference] [--publish results/<name>] [--floor PROBES]``:
(re)write a sweep's report (the paper's table, paired comparisons with the baseline, the QWK-vs-fraction plot;
``ssl_dr.reporting.writer``) and print it. ``--publish DEST``: first copy the sweep's per-job records (metrics,
environment, Hydra config and overrides, logs, predictions; no checkpoints, images or W&B folders:
``ssl_dr.reporting.publish``) into DEST, a new folder to commit, and write the report there, from the copy.
``--floor PROBES``: pair every row with the classical arm of PROBES, a probe sweep on the same photographs and
folds (a fine-tune sweep has no classical row of its own: ``ssl_dr.reporting.floor``).

Exit status 0 when the sweep is complete, 1 when expected jobs have no result (they are named in the report),
2 on bad input. A sweep writes the same report by itself when it ends (``ssl_dr.reporting.sweep_end``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_dr.reporting.jobs import ReportError
from ssl_dr.reporting.publish import publish
from ssl_dr.reporting.writer import write_report


def main(argv: list[str] | None = None) -> int:
    """CLI: print the markdown report and the files written; exit 0 complete, 1 incomplete, 2 bad input."""
    parser = argparse.ArgumentParser(prog="python -m ssl_dr.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder: outputs/<arm>/multiruns/<stamp>")
    parser.add_argument("--paper-reference", action=argparse.BooleanOptionalAction, default=True,
                        help="draw the paper's published rotation AVG as a dashed line in the plot (default: on)")
    parser.add_argument("--publish", type=Path, metavar="DEST",
                        help="copy the per-job records into DEST (a new folder, e.g. results/<name>) and report there")
    parser.add_argument("--floor", type=Path, metavar="PROBES",
                        help="a sweep with the classical arm on the same photographs and folds (experiment=real_probe):"
                             " every row is paired with its classical jobs")
    args = parser.parse_args(argv)
    try:
        copies = publish(args.sweep_dir, args.publish) if args.publish else []
        files = write_report(args.publish or args.sweep_dir, paper_reference=args.paper_reference,
                             floor_dir=args.floor)
    except (ReportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(files.markdown.read_text())
    if args.publish:
        size = sum(copy.stat().st_size for copy in copies)
        print(f"published {len(copies)} record files ({size / 1024:.0f} KiB) of {args.sweep_dir} into {args.publish}")
    written = (files.markdown, files.csv, files.paired_csv, files.screening_csv, files.floor_csv, files.plot)
    print("written:", *(p for p in written if p), sep="\n  ")
    if files.gaps:
        print(f"incomplete: {len(files.gaps)} expected job(s) have no result (listed above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
