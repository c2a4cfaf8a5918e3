"""The external validation set (``test_data=<option>``): a second labelled data set every job also grades.

A grader trained on one camera and population may not hold on another; clinical readers ask that first.
``load_external`` reads the set with the same readers as ``data=`` (``conf/test_data/`` instantiates the same
source classes), keeps its LABELLED images only (nothing else can be scored), refuses a set that shares a
photograph with the training data set, and builds its image cache with the training set's preprocessing
(``data.image_size``, ``data.preprocess``), all before any training, so a bad external set costs seconds.

Shared photographs are found by content (SHA-256 of the file bytes), not by id: the same photograph exported
under another name (IDRiD and a hospital export, EyePACS and its re-releases) would make the external score an
in-distribution one (the digests: ``ssl_dr.data.file_hashes``, stored once per list of files).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ssl_dr.data.cache import ImageCache, build_cache
from ssl_dr.data.file_hashes import HASHES_DIR, file_hashes
from ssl_dr.data.records import Record, labelled
from ssl_dr.errors import DataError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ExternalSet:
    """The labelled external images (sorted by id, the cache's row order), their cache and their folder."""

    records: list[Record]
    cache: ImageCache
    root: Path


def load_external(cfg: DictConfig, training: Sequence[Record]) -> ExternalSet | None:
    """The external set of ``cfg.test_data`` (``None`` for ``test_data=none``), checked against ``training``
    (every record of the training data set, labelled or not: the pretext saw those too) and cached with the
    training set's preprocessing."""
    test_data = cfg.get("test_data")
    if not test_data or test_data.get("source") is None:
        return None
    if OmegaConf.is_missing(test_data, "root"):
        raise DataError("test_data needs test_data.root=<folder of the external validation set>")
    source = instantiate(test_data.source)
    try:
        source.prepare()
        records = labelled(source.load())
    except DataError as err:  # the reader names data.root / data.source.*: here those are test_data.*
        raise DataError(f"test_data: {_as_test_data(str(err))}") from None
    root = Path(test_data.root)
    if not records:
        raise DataError(f"test_data: {root} has no labelled image (column test_data.source.label_column="
                        f"{test_data.source.get('label_column')}): only graded photographs can be scored")
    cache_dir = Path(cfg.paths.cache_dir)
    check_no_shared_photographs(records, training, cache_dir / HASHES_DIR)
    cache = build_cache(records, cache_dir / "images", size=cfg.data.image_size,
                        ben_graham=cfg.data.preprocess.ben_graham, num_workers=cfg.data.preprocess.num_workers,
                        mask=cfg.data.preprocess.mask)
    log.info(f"external validation set {root}: {len(records)} labelled image(s), graded after training")
    return ExternalSet(sorted(records, key=lambda r: r.id_code), cache, root)


def _as_test_data(message: str) -> str:
    """A reader's error with its settings renamed: ``data.root`` -> ``test_data.root`` (same for source)."""
    return re.sub(r"(?<![\w.])data\.(root|source)", r"test_data.\1", message)


def check_no_shared_photographs(external: Sequence[Record], training: Sequence[Record], hashes_dir: Path) -> None:
    """One ``DataError`` line when any external file has the bytes of a training file: how many, one pair,
    the fix."""
    seen = {digest: rec for rec, digest in zip(training, file_hashes(training, hashes_dir), strict=True)}
    shared = [(rec, seen[digest]) for rec, digest in zip(external, file_hashes(external, hashes_dir), strict=True)
              if digest in seen]
    if shared:
        ext, train = shared[0]
        raise DataError(f"test_data: {len(shared)} of {len(external)} labelled external image(s) are also in the "
                        f"training data set (identical file bytes), e.g. {ext.path} = {train.path}; an external "
                        "validation must grade photographs the grader never saw: remove them from the external "
                        "set (its CSV rows) or choose another test_data")


