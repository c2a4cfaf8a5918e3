"""Weights as W&B artifacts, and the lineage between the runs that made and used them (``wandb_artifacts=true``).

A trained pretext logs its backbone as ``pretext-<pretext.name>`` (type ``pretext-backbone``) aliased by its store
key, the hash of everything that shaped the weights. A fine-tune logs its tested ``best.ckpt`` as ``grader-<arm>``
(type ``model``, its result record as metadata) aliased ``frac<f>-fold<k>-split<p>-seed<s>``, and marks the
pretext artifact it started from as its input: the edge pretext -> fine-tune in W&B's lineage graph. Off by
default: a DenseNet121 is about 30 MB per run (``experiment=paper`` turns it on). Offline, W&B cannot mark an input
(``use_artifact`` needs the server), so the fine-tune names its pretext artifact in its summary
(``pretext/artifact``) instead; ``pretext/wandb_run_id`` is named either way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRETEXT_TYPE = "pretext-backbone"
GRADER_TYPE = "model"


def pretext_artifact_name(pretext: str, key: str) -> str:
    """``pretext-<name>:<key>``: the pretext weights of one store key."""
    return f"pretext-{pretext}:{key}"


def log_pretext_artifact(run: Any, weights: Path, pretext: str, key: str, metadata: dict[str, Any]) -> None:
    """The pretext's backbone file as a new version of ``pretext-<pretext>``, aliased by its store key."""
    import wandb

    artifact = wandb.Artifact(f"pretext-{pretext}", type=PRETEXT_TYPE, metadata=metadata,
                              description="backbone weights of a pretext run (ssl_dr.models.backbone.load_backbone)")
    artifact.add_file(str(weights), name=weights.name)
    run.log_artifact(artifact, aliases=[key])


def log_grader_artifact(run: Any, checkpoint: Path, arm: str, alias: str, metadata: dict[str, Any]) -> None:
    """The tested checkpoint as a new version of ``grader-<arm>``."""
    import wandb

    artifact = wandb.Artifact(f"grader-{arm}", type=GRADER_TYPE, metadata=metadata,
                              description="tested grader checkpoint (python -m ssl_dr.predict ckpt=best.ckpt ...)")
    artifact.add_file(str(checkpoint), name="best.ckpt")
    run.log_artifact(artifact, aliases=[alias])


def link_pretext(run: Any, pretext: str, key: str) -> bool:
    """Mark ``pretext-<pretext>:<key>`` as the run's input; False (with one log line) where W&B cannot: offline,
    or when the pretext ran without ``wandb_artifacts`` (then no artifact of that key exists)."""
    name = pretext_artifact_name(pretext, key)
    if run.offline:
        log.info("W&B is offline: the fine-tune's input %s is recorded in its summary (pretext/artifact), not "
                 "as a lineage edge; an online run (logger.wandb.mode=online) draws the edge", name)
        return False
    try:
        run.use_artifact(name)
    except Exception as err:  # wandb raises CommError / ValueError subclasses that vary by version
        log.warning("W&B has no artifact %s (%s): its pretext ran without wandb_artifacts=true, so the fine-tune "
                    "cannot name it as its input", name, err)
        return False
    return True
