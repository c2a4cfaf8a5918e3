"""Who a job is, as the report names it: arm, protocol, label fraction, fold, seed and split seed.

Apart from ``jobs`` and ``stats`` because both name jobs (gaps, duplicates, collapsed runs) and each imports the
other's layer mates: a leaf module keeps them free of cycles. Torch-free, like the rest of the report.
"""

from __future__ import annotations

FINETUNE = "finetune"
"""The paper's protocol and the default (conf/protocol/finetune.yaml); ``ssl_dr.training.probe_phase.FINETUNE``,
not imported: that pulls in torch. Jobs older than protocols (no ``protocol`` in their config or metrics.json)
were fine-tuned."""
CLASSICAL = "classical"
"""The reference arm without a network (conf/arm/classical.yaml): colour and texture statistics, probes only."""


def describe(arm: str, label_fraction: float, fold: int, seed: int, split_seed: int,
             protocol: str = FINETUNE) -> str:
    """One job's identity as the report prints it (gaps, duplicates, collapsed runs); the protocol only where it
    is not the default, as on the command line."""
    graded = "" if protocol == FINETUNE else f" protocol={protocol}"
    return f"arm={arm}{graded} fraction={label_fraction:g} fold={fold} seed={seed} split_seed={split_seed}"
