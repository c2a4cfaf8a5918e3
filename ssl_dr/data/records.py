"""The one currency every reader produces: a record per image.

Readers differ (APTOS csv + folder, the synthetic generator, later EyePACS and generic CSVs), but
everything downstream — splits, pretext pool, datasets — only sees ``Record`` lists, so a new data
source never touches training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NUM_GRADES = 5
GRADE_NAMES = ("none", "mild", "moderate", "severe", "proliferative")
"""The international clinical DR scale, grades 0-4 (no apparent retinopathy ... proliferative DR)."""


@dataclass(frozen=True)
class Record:
    """One fundus image: where it is, its DR grade (``None`` when unlabelled) and its patient group."""

    id_code: str
    path: Path
    grade: int | None
    group: str | None = None




def duplicate_ids(ids: Sequence[str]) -> list[str]:
    """Ids listed more than once, sorted."""
    seen: set[str] = set()
    return sorted({i for i in ids if i in seen or seen.add(i)})


def bulleted(items: Sequence[str], limit: int) -> str:
    """One indented line per item, the first ``limit`` of them, then how many more: error messages that
    name every problem without flooding the terminal."""
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {shown}{more}"


def labelled(records: Sequence[Record]) -> list[Record]:
    """Records that carry a grade (the only ones folds, fractions and metrics may use)."""
    return [r for r in records if r.grade is not None]

