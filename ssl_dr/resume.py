"""Resuming a killed run: find its folder, and make its randomness restartable.

``python -m ssl_dr.train <same overrides> resume=last`` (or ``resume=<run folder>``) continues the
newest unfinished run started with exactly the same overrides, in the same folder, from its last
checkpoint. The folder is chosen while Hydra resolves ``hydra.run.dir`` (resolver ``ssl_dr.run_dir``),
before Hydra rewrites the folder's ``.hydra/`` files, so the old command can still be compared.

A resumed run ends with the same metrics as an uninterrupted one because every random draw of
training comes from torch's global generator (augmentation seeds included, see ``FundusDataset``) and
``RngStateCallback`` stores and restores that generator (and numpy's and Python's) in checkpoints.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

RESUME_KEY = "resume"


def _command(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if not o.startswith(f"{RESUME_KEY}="))


def _started_with(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else None


def run_dir(resume: str | None, runs_dir: str, stamp: str, overrides: Any) -> str:
    """``hydra.run.dir``: a fresh ``<runs_dir>/<stamp>``, or the unfinished run to resume."""
    if not resume:
        return f"{runs_dir}/{stamp}"
    current = _command(list(overrides))
    if str(resume) == "last":
        candidates = sorted((p for p in Path(runs_dir).glob("*") if p.is_dir()), reverse=True)
        for candidate in candidates:
            if not (candidate / "metrics.json").exists() and _command(_started_with(candidate) or []) == current:
                return str(candidate)
        raise ValueError(f"resume=last: no unfinished run started with {current} under {runs_dir}; "
                         "drop resume= to start a new run")
    folder = Path(str(resume)).expanduser().resolve()
    before = _started_with(folder)
    if before is None:
        raise ValueError(f"resume={resume}: {folder} is not a run folder (no .hydra/overrides.yaml)")
    if _command(before) != current:
        raise ValueError(f"resume={resume}: that run was started with {_command(before)}, this command has "
                         f"{current}; resume only with the same command")
    if (folder / "metrics.json").exists():
        raise ValueError(f"resume={resume}: {folder} already finished (metrics.json exists); nothing to resume")
    return str(folder)


def register_resolvers() -> None:
    """Make ``${ssl_dr.run_dir:...}`` and ``${ssl_dr.sweep_values:...}`` available to the Hydra config
    (idempotent)."""
    from ssl_dr.sweep_callback import sweep_values  # here, not at the top: only configs need it

    if not OmegaConf.has_resolver("ssl_dr.run_dir"):
        OmegaConf.register_new_resolver("ssl_dr.run_dir", run_dir)
    if not OmegaConf.has_resolver("ssl_dr.sweep_values"):
        OmegaConf.register_new_resolver("ssl_dr.sweep_values", sweep_values)


class RngStateCallback(Callback):
    """Checkpoints carry the global RNG states, so training continues with the same random stream."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                "numpy_rest": [name, int(pos), int(has_gauss), float(gauss)], "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        name, pos, has_gauss, gauss = state_dict["numpy_rest"]
        np.random.set_state((name, state_dict["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
