"""The ``${ssl_dr.*:...}`` resolvers the Hydra config uses, registered before Hydra composes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf

from ssl_dr.launch.folders import config_subdir, run_dir, sweep_dir


def sweep_values(values: Any) -> str:
    """``${ssl_dr.sweep_values:${arms}}``: a config list as the comma form Hydra's sweeper expands.

    A list is what a researcher edits (``'arms=[rotation,jigsaw]'``); written directly as ``arms=a,b`` on a
    multirun command line it would itself be swept.
    """
    items = list(values) if isinstance(values, (list, tuple, ListConfig)) else [values]
    names = [str(v).strip() for v in items if str(v).strip()]
    if not names:
        raise ValueError("the list to sweep is empty: give at least one value, e.g. 'arms=[rotation,baseline]'")
    bad = [n for n in names if any(c in n for c in ",=[]() ")]
    if bad:
        raise ValueError(f"cannot sweep {bad}: give plain names, e.g. 'arms=[rotation,baseline]'")
    return ",".join(names)


def sqlite_url(path: str) -> str:
    """``${ssl_dr.sqlite:<file>}``: an SQLAlchemy URL for a database file whose folder exists (sqlite cannot
    create folders), e.g. the Optuna study that ``hparams_search=`` keeps between runs of the same command."""
    file = Path(str(path)).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


RESOLVERS = {"ssl_dr.run_dir": run_dir, "ssl_dr.sweep_dir": sweep_dir, "ssl_dr.config_subdir": config_subdir,
             "ssl_dr.sweep_values": sweep_values, "ssl_dr.sqlite": sqlite_url}


def register_resolvers() -> None:
    """Make every ``${ssl_dr.*:...}`` resolver available to the Hydra config (idempotent)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
