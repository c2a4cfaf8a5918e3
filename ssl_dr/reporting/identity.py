"""Who a job is, as the report names it (``ssl_dr.run_contract.JobIdentity``), and the report's arm names.

Apart from ``jobs`` and ``stats`` because both name jobs (gaps, duplicates, collapsed runs) and each imports the
other's layer mates: a leaf module keeps them free of cycles.
"""

from __future__ import annotations

from ssl_dr.run_contract import FINETUNE, JobIdentity

CLASSICAL = "classical"
"""The reference arm without a network (conf/arm/classical.yaml): colour and texture statistics, probes only."""


def describe(arm: str, label_fraction: float, fold: int, seed: int, split_seed: int,
             protocol: str = FINETUNE) -> str:
    """One job's identity as the report prints it (gaps, duplicates, collapsed runs); the protocol only where it
    is not the default, as on the command line."""
    return JobIdentity(arm, label_fraction, fold, seed, split_seed, protocol).describe()
