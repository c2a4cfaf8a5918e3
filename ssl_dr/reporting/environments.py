"""The environments a sweep's jobs ran in, for the report: read from each job's ``environment.json``.

Why: the same code gave other numbers after a reinstall, and on a newcomer's machine (README, *Numbers*). A
sweep whose jobs ran on two library stacks (a resumed sweep after an upgrade, a cluster with mixed nodes)
compares arms across environments without saying so; the report names the environment(s) and warns, with
the fields that differ, when there is more than one. Jobs run before environments were recorded are counted,
not guessed at.

Torch-free (the report runs on a laptop): the files are read as JSON; ``ssl_dr.training.environment`` writes
them and computes the ``fingerprint`` this module groups by.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ssl_dr.run_contract import ENVIRONMENT

MAX_FIELDS = 8
"""Differing fields named in the warning; two machines can differ in dozens (every package), the first few
(in the file's order: python, packages, code, cpu, torch, gpu) say enough to look further."""
MAX_JOBS = 10
"""Job folders named in the "no environment.json" line."""
NOT_COMPARED = ("fingerprint", "summary")


def environment_lines(job_dirs: Iterable[Path]) -> list[str]:
    """Markdown lines naming the environment(s) of ``job_dirs`` (one summary line each, with its job count),
    led by a WARNING line when the jobs ran in more than one (different fingerprints, with the fields that
    differ), and followed by a line for jobs without a readable ``environment.json``; [] without jobs."""
    job_dirs = list(job_dirs)
    if not job_dirs:
        return []
    groups: dict[str, list[dict[str, Any]]] = {}
    unrecorded: list[Path] = []
    for job in job_dirs:
        env = read_environment(job)
        if env is None:
            unrecorded.append(job)
        else:
            groups.setdefault(str(env["fingerprint"]), []).append(env)
    lines: list[str] = []
    if len(groups) > 1:
        lines += [mixed_warning([envs[0] for envs in groups.values()]), ""]
    if groups:
        lines.append("Environment:" if len(groups) == 1 else "Environments:")
        for fp, envs in sorted(groups.items(), key=lambda item: -len(item[1])):
            lines.append(f"- {envs[0].get('summary', 'no summary')} ({_jobs(len(envs))}, fingerprint `{fp}`)")
    if unrecorded:
        lines += [""] if lines else []
        lines.append(_unrecorded_line(unrecorded, len(job_dirs)))
    return lines


def read_environment(job_dir: Path) -> dict[str, Any] | None:
    """The job's environment, or None when it has none or it is unreadable (an older run, a file cut short)."""
    try:
        env = json.loads((Path(job_dir) / ENVIRONMENT).read_text())
    except (OSError, ValueError):
        return None
    return env if isinstance(env, dict) and env.get("fingerprint") else None


def mixed_warning(environments: list[Mapping[str, Any]]) -> str:
    """One line: how many environments, and each differing field with its values (in the order given)."""
    fields = differing_fields(environments)
    shown = [f"`{key}` ({' / '.join(_short(v) for v in values)})" for key, values in list(fields.items())[:MAX_FIELDS]]
    if len(fields) > MAX_FIELDS:
        shown.append(f"and {len(fields) - MAX_FIELDS} more")
    return (f"**WARNING: this sweep mixes {len(environments)} environments**: its jobs may differ by the "
            f"environment, not only by arm, fraction or fold. Fields that differ: {', '.join(shown) or 'none'}.")


def differing_fields(environments: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Dotted field -> its value in each environment, for the fields whose values are not all equal."""
    flat = [_flatten(env) for env in environments]
    keys = dict.fromkeys(key for one in flat for key in one)  # first seen first: the file's order
    values = {key: [one.get(key) for one in flat] for key in keys}
    return {key: vals for key, vals in values.items() if len({json.dumps(v, sort_keys=True) for v in vals}) > 1}


def _flatten(env: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in env.items():
        if not prefix and key in NOT_COMPARED:
            continue
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value: Any, width: int = 40) -> str:
    text = "missing" if value is None else str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def _unrecorded_line(jobs: list[Path], total: int) -> str:
    names = ", ".join(f"`{Path(job).name}`" for job in jobs[:MAX_JOBS])
    if len(jobs) > MAX_JOBS:
        names += f" and {len(jobs) - MAX_JOBS} more"
    verb = "has" if len(jobs) == 1 else "have"
    return (f"{len(jobs)} of {total} jobs {verb} no readable {ENVIRONMENT} (run before environments were "
            f"recorded): {names}; what they ran on is unknown.")
