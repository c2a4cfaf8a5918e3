"""The run's story goes through Python ``logging``, so Hydra writes it to the run's ``train.log`` in the same
words as the console (``conf/hydra/default.yaml``: ``job_logging``).

Under DDP every rank runs the whole job (and Lightning's launcher starts the other ranks with the same Hydra
run folder), so only the process that owns the run may speak: ``RankZeroOnly`` drops the other ranks'
records, before any handler, console or file, sees them.
"""

from __future__ import annotations

import logging

from ssl_dr.ranks import is_launch_rank_zero


class RankZeroOnly(logging.Filter):
    """Pass a record only in rank 0 (or a run without DDP); read from the rank variables at each record, so a
    process that becomes a rank after logging was configured is still filtered."""

    def filter(self, record: logging.LogRecord) -> bool:
        return is_launch_rank_zero()
