"""Synthetic fundus generator: determinism, the anatomy that makes rotation learnable, grade-dependent
lesions, and the write-once, atomic dataset folder."""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pytest

from ssl_dr.data import synthetic
from ssl_dr.data.synthetic import GRADE_MIX, NUM_GRADES, assign_grades, render_fundus, write_synthetic_dataset

SMALL = {"num_labelled": 30, "num_unlabelled": 5, "image_size": 64, "seed": 0}


def _render(seed: int, grade: int = 0, size: int = 96, eye: str = "left") -> np.ndarray:
    return render_fundus(np.random.default_rng(seed), grade, size, eye)


def _disc_position(img: np.ndarray) -> tuple[float, float]:
    """(x, y) of the brightest blurred spot: the optic disc."""
    lum = cv2.GaussianBlur(img.astype(np.float32).mean(axis=2), (0, 0), img.shape[0] / 40)
    y, x = np.unravel_index(np.argmax(lum), lum.shape)
    return float(x), float(y)


def _read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------------------------------- images


def test_same_seed_gives_identical_images_and_another_seed_does_not():
    assert np.array_equal(_render(1, grade=3), _render(1, grade=3))
    assert not np.array_equal(_render(1, grade=3), _render(2, grade=3))


def test_shape_dtype_and_centred_circular_field_of_view():
    size = 64
    img = _render(3, grade=4, size=size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2)
    assert not img[radius > size / 2].any()  # corners and the whole outside are black
    assert (img[radius < 0.44 * size].max(axis=1) > 0).all()  # the retina fills the circle
    black = img.max(axis=2) < 10
    assert np.mean(black != np.rot90(black)) < 0.01  # the border carries no rotation cue


@pytest.mark.parametrize("seed", range(4))
def test_left_and_right_eyes_are_mirrored(seed):
    size = 96
    left_x, left_y = _disc_position(_render(seed, eye="left", size=size))
    right_x, right_y = _disc_position(_render(seed, eye="right", size=size))
    assert left_x < 0.4 * size and right_x > 0.6 * size  # disc on the nasal side, opposite halves
    assert abs(left_y - size / 2) < 0.15 * size and abs(right_y - size / 2) < 0.15 * size


def test_orientation_is_visible_under_rotation():
    for seed in range(3):
        img = _render(seed).astype(np.float32)
        for k in (1, 2, 3):
            assert np.abs(img - np.rot90(img, k)).mean() > 4, (seed, k)


def test_lesions_grow_with_grade():
    """Same rng state at two grades = same eye; the pixels that change are the lesions."""
    size, seeds = 96, range(12)
    area = np.zeros(NUM_GRADES)
    for seed in seeds:
        healthy = _render(seed, 0, size).astype(np.int16)
        for grade in range(NUM_GRADES):
            diff = np.abs(_render(seed, grade, size).astype(np.int16) - healthy).sum(axis=2)
            area[grade] += np.mean(diff > 30) / len(seeds)
    assert area[0] == 0
    assert 0 < area[1] < area[2] < area[3]
    assert area[4] > area[2]


def test_microaneurysms_are_dark_and_visible_at_64px():
    for seed in range(6):
        healthy = _render(seed, 0, size=64).astype(np.int16)
        mild = _render(seed, 1, size=64).astype(np.int16)
        diff = (mild - healthy).sum(axis=2)
        assert diff.min() < -60, seed  # at least one clearly darker dot
        assert diff.max() < 30, seed  # and nothing brighter: grade 1 is microaneurysms only


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"grade": 5}, "grade"), ({"grade": -1}, "grade"), ({"eye": "middle"}, "eye"), ({"size": 16}, "size")],
)
def test_render_rejects_bad_arguments(kwargs, match):
    args = {"grade": 0, "size": 64, "eye": "left"} | kwargs
    with pytest.raises(ValueError, match=match):
        render_fundus(np.random.default_rng(0), **args)


# ------------------------------------------------------------------------------------------- grades


@pytest.mark.parametrize("n", [7, 20, 33, 600])
def test_assign_grades_follows_the_mix(n):
    grades = assign_grades(n, GRADE_MIX, np.random.default_rng(0))
    counts = np.bincount(grades, minlength=NUM_GRADES)
    assert counts.sum() == n
    expected = np.asarray(GRADE_MIX) / sum(GRADE_MIX) * n
    assert np.all(np.abs(counts - expected) <= (1 if n < 20 else 1.5))
    if n >= 20:
        assert (counts > 0).all()
    assert np.array_equal(grades, assign_grades(n, GRADE_MIX, np.random.default_rng(0)))


# ------------------------------------------------------------------------------------------ dataset


def test_writes_an_aptos_layout_folder(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", **SMALL)
    assert root == tmp_path / "syn"
    train = _read_csv(root / "train.csv")
    assert train[0] == ["id_code", "diagnosis"]
    ids, grades = zip(*train[1:], strict=True)
    assert len(ids) == 30 and len(set(ids)) == 30
    assert {int(g) for g in grades} == set(range(NUM_GRADES))
    test = _read_csv(root / "test.csv")
    assert test[0] == ["id_code"] and len(test) == 1 + 5
    for split, rows in (("train", train), ("test", test)):
        for row in rows[1:]:
            img = cv2.imread(str(root / f"{split}_images" / f"{row[0]}.png"))
            assert img is not None and img.shape == (64, 64, 3)
    assert cv2.imread(str(root / "montage.png")).shape[1] == NUM_GRADES * 64
    meta = json.loads((root / "generator.json").read_text())
    assert {k: meta[k] for k in SMALL} == SMALL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temporary folder left behind


def test_second_call_reuses_the_folder(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert write_synthetic_dataset(tmp_path / "syn", **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_same_parameters_give_byte_identical_files(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", **SMALL)
    b = write_synthetic_dataset(tmp_path / "b", **SMALL)
    for name in ("train.csv", "test.csv", "train_images/syn_00007.png", "test_images/synu_00003.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_worker_processes_write_the_files_of_one_process(tmp_path):
    """Each image has its own random stream: rendering in a pool must not change a byte (the quick start's
    numbers depend on these pixels)."""
    one = write_synthetic_dataset(tmp_path / "one", **SMALL, num_workers=1)
    pool = write_synthetic_dataset(tmp_path / "pool", **SMALL, num_workers=3)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(pool) for p in pool.rglob("*") if p.is_file())
    assert len(files) == 30 + 5 + 4  # images, montage, two csv files, generator.json
    for name in files:
        assert (one / name).read_bytes() == (pool / name).read_bytes(), name


@pytest.mark.parametrize("change", [{"seed": 1}, {"image_size": 48}, {"num_labelled": 31}])
def test_mismatched_parameters_are_refused(tmp_path, change):
    write_synthetic_dataset(tmp_path / "syn", **SMALL)
    with pytest.raises(ValueError, match="delete it or choose another root"):
        write_synthetic_dataset(tmp_path / "syn", **(SMALL | change))


def test_incomplete_or_foreign_folders_are_refused(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", **SMALL)
    (root / "train_images" / "syn_00004.png").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        write_synthetic_dataset(root, **SMALL)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a complete synthetic dataset"):
        write_synthetic_dataset(foreign, **SMALL)


def test_empty_existing_folder_is_filled_and_unlabelled_part_is_optional(tmp_path):
    (tmp_path / "syn").mkdir()
    root = write_synthetic_dataset(tmp_path / "syn", num_labelled=3, num_unlabelled=0, image_size=32)
    assert (root / "train.csv").is_file()
    assert not (root / "test.csv").exists() and not (root / "test_images").exists()


def test_losing_the_rename_race_keeps_the_winner(tmp_path, monkeypatch):
    real_replace = os.replace

    def other_process_finishes_first(src, dst):
        monkeypatch.setattr(os, "replace", real_replace)
        write_synthetic_dataset(dst, **SMALL)
        real_replace(src, dst)  # fails: dst is now a non-empty folder

    monkeypatch.setattr(os, "replace", other_process_finishes_first)
    assert write_synthetic_dataset(tmp_path / "syn", **SMALL) == tmp_path / "syn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_a_folder_that_appears_during_the_build_is_refused_never_deleted(tmp_path, monkeypatch):
    real_replace = os.replace

    def user_fills_the_folder_first(src, dst):
        monkeypatch.setattr(os, "replace", real_replace)
        dst.mkdir()
        (dst / "notes.txt").write_text("mine")
        real_replace(src, dst)  # fails: dst is now a non-empty folder

    monkeypatch.setattr(os, "replace", user_fills_the_folder_first)
    with pytest.raises(ValueError, match="not a complete synthetic dataset"):
        write_synthetic_dataset(tmp_path / "syn", **SMALL)
    assert [p.name for p in (tmp_path / "syn").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_labelled": 0}, "num_labelled"),
        ({"num_unlabelled": -1}, "num_unlabelled"),
        ({"image_size": 16}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"grade_mix": (1, 2)}, "grade_mix"),
        ({"grade_mix": (0, 0, 0, 0, 0)}, "grade_mix"),
        ({"grade_mix": (-1, 1, 1, 1, 1)}, "grade_mix"),
    ],
)
def test_dataset_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(tmp_path / "syn", **(SMALL | kwargs))
    assert not any(tmp_path.iterdir())


def test_cli_reports_where_and_what(tmp_path, capsys):
    root = tmp_path / "cli"
    assert (
        synthetic.main(["--root", str(root), "--num-labelled", "20", "--num-unlabelled", "0", "--image-size", "32"])
        == 0
    )
    out = capsys.readouterr().out
    assert str(root) in out and "4 (proliferative)" in out
    assert len(_read_csv(root / "train.csv")) == 21
