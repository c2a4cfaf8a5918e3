"""The external validation set (``test_data=<option>``, ``ssl_dr.data.external``): read with the data readers,
labelled images only, refused when it shares photographs with the training data set, cached as the training set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from ssl_dr.data.csv_source import CsvSource
from ssl_dr.data.external import load_external
from ssl_dr.data.file_hashes import HASHES_DIR, file_hashes
from ssl_dr.data.synthetic import write_synthetic_dataset
from ssl_dr.errors import DataError
from tests.conftest import TINY, TINY_SYNTHETIC, compose_cfg


def training_records(cfg) -> list:
    source = instantiate(cfg.data.source)
    source.prepare()
    return source.load()


def csv_set(root: Path, images: list[tuple[str, Path, int]]) -> Path:
    """``root/labels.csv`` (id_code,diagnosis) + ``root/images/<id>.png``: copies of the given files."""
    (root / "images").mkdir(parents=True)
    for id_code, source, _ in images:
        shutil.copy(source, root / "images" / f"{id_code}.png")
    (root / "labels.csv").write_text("id_code,diagnosis\n" + "".join(f"{i},{g}\n" for i, _, g in images))
    return root


def test_default_is_no_external_set(tmp_path):
    cfg = compose_cfg(tmp_path, TINY)
    assert not cfg.test_data  # test_data=none: the quick start reads and grades nothing more
    assert load_external(cfg, []) is None


@pytest.mark.parametrize("option", ["csv", "patient_csv", "aptos", "eyepacs"])
def test_every_test_data_option_composes_with_the_data_readers(option, tmp_path):
    cfg = compose_cfg(tmp_path, [f"test_data={option}", f"test_data.root={tmp_path}"])
    data_cfg = compose_cfg(tmp_path, [f"data={option}", f"data.root={tmp_path}"])
    assert type(instantiate(cfg.test_data.source)) is type(instantiate(data_cfg.data.source))
    assert instantiate(cfg.test_data.source).root == tmp_path


def test_labelled_images_only_cached_with_the_training_preprocessing(tmp_path):
    """An APTOS-layout external set: its unlabelled test.csv images are not graded; the cache has the
    training set's size and mask."""
    external = write_synthetic_dataset(tmp_path / "other", num_labelled=6, num_unlabelled=3, image_size=32, seed=5)
    cfg = compose_cfg(tmp_path, [*TINY, "test_data=aptos", f"test_data.root={external}",
                                 "data.preprocess.mask=inscribed_circle"])
    loaded = load_external(cfg, training_records(cfg))
    assert len(loaded.records) == 6 and all(r.grade is not None for r in loaded.records)
    assert loaded.cache.ids == sorted(r.id_code for r in loaded.records)
    assert (loaded.cache.size, loaded.cache.mask) == (32, "inscribed_circle")
    assert loaded.root == external


def test_photographs_shared_with_the_training_set_are_refused_in_one_line(tmp_path):
    """Training images copied under other names (the same photograph in two exports) are found by content."""
    cfg = compose_cfg(tmp_path, TINY)
    training = training_records(cfg)
    fresh = write_synthetic_dataset(tmp_path / "fresh", num_labelled=2, num_unlabelled=0, image_size=32, seed=9)
    copies = [(f"copy{i}", rec.path, 0) for i, rec in enumerate(training[:3])]
    fresh_images = [(f"new{i}", p, 1) for i, p in enumerate(sorted((fresh / "train_images").iterdir()))]
    root = csv_set(tmp_path / "ext", copies + fresh_images)
    cfg = compose_cfg(tmp_path, [*TINY, "test_data=csv", f"test_data.root={root}"])
    with pytest.raises(DataError) as refused:
        load_external(cfg, training)
    message = str(refused.value)
    assert "\n" not in message and "3 of 5 labelled external image(s)" in message
    assert f"{root / 'images' / 'copy0.png'} = {training[0].path}" in message and "remove them" in message
    clean = csv_set(tmp_path / "clean", fresh_images)  # the same set without the copies is graded
    cfg = compose_cfg(tmp_path, [*TINY, "test_data=csv", f"test_data.root={clean}"])
    assert len(load_external(cfg, training).records) == 2


def test_unlabelled_photographs_of_the_training_set_count_too(tmp_path):
    """The pretext trains on the unlabelled images: an external copy of one is refused as well."""
    cfg = compose_cfg(tmp_path, TINY)
    training = training_records(cfg)
    unlabelled = next(r for r in training if r.grade is None)
    root = csv_set(tmp_path / "ext", [("x", unlabelled.path, 2)])
    cfg = compose_cfg(tmp_path, [*TINY, "test_data=csv", f"test_data.root={root}"])
    with pytest.raises(DataError, match="1 of 1 labelled"):
        load_external(cfg, training)


@pytest.mark.parametrize(("overrides", "match"), [
    (["test_data=csv"], r"test_data needs test_data.root=<folder"),
    (["test_data=csv", "test_data.root=/no/such/folder"],
     r"^test_data: data folder /no/such/folder does not exist: set test_data.root"),
])
def test_missing_root_names_the_test_data_setting(overrides, match, tmp_path):
    cfg = compose_cfg(tmp_path, [*TINY, *overrides])
    with pytest.raises(DataError, match=match):
        load_external(cfg, [])


@pytest.mark.parametrize(("labels_csv", "match"), [
    # a reader's error names the test_data settings, not data.*
    ("id_code,level\na,0\n", r"lacks column\(s\) \['diagnosis'\].*set the column names in test_data.source"),
    # a set without labelled images is refused
    ("id_code,diagnosis\n", r"has no labelled image \(column test_data.source.label_column=diagnosis\)"),
])
def test_a_bad_labels_file_is_one_line_naming_test_data(labels_csv, match, tmp_path):
    root = tmp_path / "ext"
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_text(labels_csv)
    cfg = compose_cfg(tmp_path, [*TINY, "test_data=csv", f"test_data.root={root}"])
    with pytest.raises(DataError, match=match):
        load_external(cfg, [])


def test_file_hashes_are_stored_and_renewed_when_a_file_changes(tmp_path):
    folder = write_synthetic_dataset(tmp_path / "set", num_labelled=3, num_unlabelled=0, image_size=32)
    records = CsvSource(folder).load()
    hashes_dir = tmp_path / HASHES_DIR
    first = file_hashes(records, hashes_dir)
    assert len(set(first)) == 3
    (stored,) = hashes_dir.glob("*.json")
    stored.write_text(json.dumps(["a", "b", "c"]))  # a stored result is read, not recomputed
    assert file_hashes(records, hashes_dir) == ["a", "b", "c"]
    stat = records[0].path.stat()
    os.utime(records[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # rewritten: hashed again
    assert file_hashes(records, hashes_dir) == first


@pytest.mark.e2e
def test_cli_refuses_an_overlapping_external_set_with_exit_2(tmp_path):
    """The same synthetic set as test_data (same seed and counts: the same files): one line, exit 2, no training."""
    same = [o.replace("data.source", "test_data.source") for o in TINY_SYNTHETIC]
    result = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=baseline", *TINY, "test_data=synthetic",
                             *same, "test_data.source.seed=0"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "60 of 60 labelled external image(s)" in errors[0]
    assert "Traceback" not in result.stderr and "Epoch" not in result.stdout
