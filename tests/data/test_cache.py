"""Fundus preprocessing and the preprocessed-image cache, on tiny images written to tmp_path."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from ssl_dr.data import cache as cache_module
from ssl_dr.data import decode as decode_module
from ssl_dr.data.cache import ImageCache, build_cache, cache_key
from ssl_dr.data.decode import read_rgb
from ssl_dr.data.fundus_preprocess import ben_graham, crop_to_fundus, preprocess
from ssl_dr.data.records import Record
from ssl_dr.errors import DataError

SIZE = 16


def fundus(height: int, width: int, centre: tuple[int, int], radius: int, seed: int = 0) -> np.ndarray:
    """Black field with a textured bright disc at ``centre`` (x, y)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    cv2.circle(image, centre, radius, (170, 90, 40), thickness=-1)
    texture = rng.integers(0, 40, image.shape, dtype=np.uint8)
    return np.where(image > 0, image + texture, 0).astype(np.uint8)


def write(path, image: np.ndarray | Image.Image, **save_args):
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **save_args)
    return path


def records_for(paths) -> list[Record]:
    return [Record(id_code=p.stem, path=p, grade=0) for p in paths]


@pytest.fixture
def images(tmp_path):
    """Four valid fundus-like PNG/JPEG files of different shapes."""
    folder = tmp_path / "images"
    folder.mkdir()
    shapes = [(40, 60, (35, 20), 15), (50, 50, (25, 25), 22), (30, 70, (30, 15), 20), (64, 48, (20, 40), 18)]
    return [write(folder / f"img{i}.{'png' if i % 2 else 'jpg'}", fundus(h, w, c, r, seed=i))
            for i, (h, w, c, r) in enumerate(shapes)]


# --- fundus_preprocess -------------------------------------------------------------------------------------------

def test_crop_to_fundus_squares_an_off_centre_disc_and_ignores_specks():
    image = fundus(200, 300, centre=(210, 90), radius=50)
    image[5, 5] = image[190, 20] = 255  # isolated noise in the border
    out = crop_to_fundus(image)
    side = out.shape[0]
    assert out.shape == (side, side, 3) and 97 <= side <= 101  # a disc's extreme rows hold only a few pixels
    ys, xs = np.nonzero(out.any(axis=2))
    assert abs(ys.mean() - (side - 1) / 2) < 1 and abs(xs.mean() - (side - 1) / 2) < 1
    assert len(ys) > 0.99 * (image.any(axis=2).sum() - 2)


def test_crop_to_fundus_pads_a_clipped_disc_to_a_centred_square():
    image = fundus(60, 120, centre=(60, 30), radius=40)  # disc clipped at top and bottom: bbox 60 x 81
    out = crop_to_fundus(image)
    assert out.shape == (81, 81, 3)
    np.testing.assert_array_equal(out[10:70], image[:, 20:101])
    assert not out[:10].any() and not out[70:].any()


def test_crop_to_fundus_returns_a_dark_image_unchanged():
    dark = np.random.default_rng(0).integers(0, 6, (30, 50, 3), dtype=np.uint8)
    assert crop_to_fundus(dark) is dark
    black = np.zeros((7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_to_fundus(black), black)


def test_ben_graham_keeps_shape_and_dtype_and_the_outside_black():
    image = cv2.resize(crop_to_fundus(fundus(90, 120, centre=(60, 45), radius=40)), (64, 64))
    out = ben_graham(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    yy, xx = np.mgrid[:64, :64]
    outside = np.hypot(yy - 32, xx - 32) > 0.95 * 32 + 1
    assert not out[outside].any()
    assert out[~outside].mean() > 60


@pytest.mark.parametrize("shape", [(9, 12, 3), (300, 200, 3), (16, 16, 3)])
@pytest.mark.parametrize("normalise", [False, True])
def test_preprocess_gives_a_square_uint8_image(shape, normalise):
    image = fundus(shape[0], shape[1], centre=(shape[1] // 2, shape[0] // 2), radius=min(shape[:2]) // 2)
    out = preprocess(image, SIZE, ben_graham=normalise)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8


def test_preprocess_without_a_mask_matches_crop_pad_then_resize():
    image = fundus(300, 420, centre=(250, 150), radius=140)  # clipped at top and bottom
    expected = cv2.resize(crop_to_fundus(image), (64, 64), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(preprocess(image, 64, ben_graham=False, mask="none").astype(int) - expected).mean() < 2


# --- cache: build, reuse, keys -----------------------------------------------------------------------------------

def test_build_cache_rows_equal_preprocess_of_read_rgb(tmp_path, images):
    records = records_for(images)
    cache = build_cache(records, tmp_path / "cache", SIZE, ben_graham=True, num_workers=1)
    assert len(cache) == len(records) and cache.path.parent == tmp_path / "cache"
    assert cache.key == cache_key(records, SIZE, True) == cache.path.name
    for row, rec in enumerate(sorted(records, key=lambda r: r.id_code)):
        expected = preprocess(read_rgb(rec.path), SIZE, ben_graham=True)
        np.testing.assert_array_equal(cache.image(rec.id_code), expected)
        np.testing.assert_array_equal(cache.row(row), expected)
    index = json.loads((cache.path / "index.json").read_text())
    assert index["ids"] == sorted(r.id_code for r in records)
    assert (index["size"], index["ben_graham"], index["key"]) == (SIZE, True, cache.key)
    with pytest.raises(KeyError, match="nope"):
        cache.image("nope")


def test_parallel_build_equals_serial_build(tmp_path, images, monkeypatch):
    monkeypatch.setattr(cache_module, "CHUNK", 1)
    serial = build_cache(records_for(images), tmp_path / "a", SIZE, ben_graham=False, num_workers=1)
    parallel = build_cache(records_for(images), tmp_path / "b", SIZE, ben_graham=False, num_workers=2)
    np.testing.assert_array_equal(serial.array, parallel.array)


def test_second_call_reuses_the_entry_without_decoding(tmp_path, images, monkeypatch):
    first = build_cache(records_for(images), tmp_path, SIZE, ben_graham=False, num_workers=1)
    mtime = (first.path / "images.npy").stat().st_mtime_ns
    monkeypatch.setattr(cache_module, "_fill_rows", lambda *a: pytest.fail("rebuilt a complete entry"))
    second = build_cache(records_for(images), tmp_path, SIZE, ben_graham=False)
    assert second.path == first.path and (second.path / "images.npy").stat().st_mtime_ns == mtime


def test_any_setting_or_content_change_gives_a_new_key_and_nothing_else_does(images, tmp_path):
    records = records_for(images)
    hashes = tmp_path / "file_hashes"
    base = cache_key(records, SIZE, False, hashes_dir=hashes)
    assert cache_key(list(reversed(records)), SIZE, False) == base
    assert cache_key(records, SIZE + 1, False) != base
    assert cache_key(records, SIZE, True) != base
    assert cache_key(records[:-1], SIZE, False) != base
    # the same bytes touched, or copied elsewhere (a re-synced or moved data folder): the same entry
    stat = images[0].stat()
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache_key(records, SIZE, False, hashes_dir=hashes) == base
    moved = tmp_path / "moved"
    moved.mkdir()
    copies = [shutil.copy(p, moved / p.name) for p in images]
    assert cache_key(records_for([Path(c) for c in copies]), SIZE, False, hashes_dir=hashes) == base
    # other bytes under the same name: a new entry, even with the old size and time
    write(images[1], fundus(40, 40, (20, 20), 10, seed=9))
    assert cache_key(records, SIZE, False, hashes_dir=hashes) != base


def test_a_changed_file_is_never_served_from_the_old_entry(tmp_path, images):
    records = records_for(images)
    old = build_cache(records, tmp_path, SIZE, ben_graham=False, num_workers=1)
    replacement = fundus(40, 40, (20, 20), 19, seed=7)
    write(images[0], replacement, format="PNG")
    new = build_cache(records, tmp_path, SIZE, ben_graham=False, num_workers=1)
    assert new.path != old.path
    np.testing.assert_array_equal(new.image(images[0].stem), preprocess(replacement, SIZE, False))


def test_missing_and_duplicate_records_are_data_errors(tmp_path, images):
    with pytest.raises(DataError, match="gone.png"):
        cache_key([*records_for(images), Record("gone", tmp_path / "gone.png", 0)], SIZE, False)
    with pytest.raises(DataError, match=r"duplicate id_code[\s\S]*img0"):
        cache_key(records_for(images) + records_for(images[:1]), SIZE, False)


# --- cache: interrupted builds -----------------------------------------------------------------------------------

def test_a_build_that_fails_midway_leaves_nothing_trusted(tmp_path, images, monkeypatch):
    calls = []

    def flaky(image, size, ben_graham, mask):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker died")
        return preprocess(image, size, ben_graham, mask)

    monkeypatch.setattr(decode_module, "preprocess", flaky)
    with pytest.raises(RuntimeError, match="worker died"):
        build_cache(records_for(images), tmp_path, SIZE, ben_graham=False, num_workers=1)
    assert list(tmp_path.iterdir()) == [tmp_path / "images"]
    monkeypatch.setattr(decode_module, "preprocess", preprocess)
    assert len(build_cache(records_for(images), tmp_path / "cache", SIZE, ben_graham=False, num_workers=1)) == 4


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_leftover_temp_folders_are_ignored_and_dead_ones_removed(tmp_path, images):
    records = records_for(images)
    key = cache_key(records, SIZE, False)
    host = socket.gethostname()
    dead = tmp_path / f".{key}.tmp-{host}-{dead_pid()}-abc"
    live = tmp_path / f".{key}.tmp-{host}-{os.getpid()}-def"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "index.json").write_text(json.dumps({"key": key, "ids": ["junk"]}))
    cache = build_cache(records, tmp_path, SIZE, ben_graham=False, num_workers=1)
    assert cache.path == tmp_path / key and len(cache) == 4
    assert not dead.exists() and live.exists()


def test_when_another_process_publishes_first_its_entry_is_used(tmp_path, images, monkeypatch):
    records = records_for(images)
    theirs = build_cache(records, tmp_path / "other", SIZE, ben_graham=False, num_workers=1).path
    index = json.loads((theirs / "index.json").read_text())
    (theirs / "index.json").write_text(json.dumps({**index, "builder": "the other process"}))
    write_entry = cache_module._write_entry

    def slow_write(folder, *args):  # the other process publishes while this one is still building
        write_entry(folder, *args)
        os.replace(theirs, tmp_path / "cache" / theirs.name)

    monkeypatch.setattr(cache_module, "_write_entry", slow_write)
    cache = build_cache(records, tmp_path / "cache", SIZE, ben_graham=False, num_workers=1)
    assert json.loads((cache.path / "index.json").read_text())["builder"] == "the other process"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.key]


def test_a_damaged_entry_is_rebuilt_not_trusted(tmp_path, images):
    records = records_for(images)
    entry = build_cache(records, tmp_path, SIZE, ben_graham=False, num_workers=1).path
    expected = np.array(ImageCache(entry).array)
    np.save(entry / "images.npy", expected[:2])  # e.g. a hand-copied partial entry
    rebuilt = build_cache(records, tmp_path, SIZE, ben_graham=False, num_workers=1)
    assert rebuilt.path == entry
    np.testing.assert_array_equal(rebuilt.array, expected)


def test_an_entry_is_readable_by_other_users(tmp_path, images):
    """Built in a private temporary folder (mkdtemp), published readable: other users' runs share the cache."""
    entry = build_cache(records_for(images), tmp_path, SIZE, ben_graham=False, num_workers=1).path
    assert entry.stat().st_mode & 0o777 == 0o755


# --- cache: bad and odd images -----------------------------------------------------------------------------------

def encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


def test_all_bad_files_are_reported_in_one_error(tmp_path, images):
    pixels = fundus(120, 120, (60, 60), 50)
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    broken_chunk = bytearray(encoded(noise, "PNG"))  # > 64 KiB: several IDAT chunks
    second_idat = broken_chunk.find(b"IDAT", broken_chunk.find(b"IDAT") + 4)
    broken_chunk[second_idat:second_idat + 4] = b"\x01\x02\x03\x04"  # PIL raises SyntaxError on load
    bad = {
        "empty.png": b"",
        "cut_png.png": encoded(pixels, "PNG")[:400],
        "cut_jpg.jpg": encoded(pixels, "JPEG")[:-40],
        "text.png": b"id_code,diagnosis\nnot an image\n",
        "chunk.png": bytes(broken_chunk),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    records = records_for(images) + records_for(tmp_path / name for name in bad)
    with pytest.raises(DataError) as err:
        build_cache(records, tmp_path / "cache", SIZE, ben_graham=False, num_workers=2)
    message = str(err.value)
    assert f"{len(bad)} image file(s) cannot be read" in message and "replace or remove" in message
    for name in bad:
        assert str(tmp_path / name) in message
    assert not any(p.name.startswith(".") or p.is_dir() for p in (tmp_path / "cache").iterdir())


def test_a_long_list_of_bad_files_is_shortened(tmp_path):
    paths = [tmp_path / f"bad{i:02d}.png" for i in range(23)]
    for path in paths:
        path.write_bytes(b"")
    with pytest.raises(DataError, match=r"23 image file\(s\)[\s\S]*bad19.png[^\n]*\n  \.\.\. and 3 more") as err:
        build_cache(records_for(paths), tmp_path / "cache", SIZE, ben_graham=False, num_workers=1)
    assert "bad20.png" not in str(err.value)


def test_truncated_files_fail_even_when_pil_is_told_to_load_them(tmp_path, images, monkeypatch):
    (tmp_path / "cut.jpg").write_bytes(encoded(fundus(80, 80, (40, 40), 30), "JPEG")[:-100])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="cut.jpg"):
        build_cache(records_for([*images, tmp_path / "cut.jpg"]), tmp_path / "cache", SIZE, False, num_workers=1)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def odd_images(folder) -> dict[str, object]:
    """Valid but unusual files: modes, bit depths, orientation, shapes."""
    base = fundus(30, 40, (20, 15), 13)
    paths = {
        "grey": write(folder / "grey.png", Image.fromarray(base).convert("L")),
        "rgba": write(folder / "rgba.png", Image.fromarray(base).convert("RGBA")),
        "deep": write(folder / "deep.png", Image.fromarray(base[..., 0].astype(np.uint16) * 257)),
        "cmyk": write(folder / "cmyk.jpg", Image.fromarray(base).convert("CMYK"), quality=95),
        "tiny": write(folder / "tiny.png", fundus(9, 12, (6, 4), 4)),
        "wide": write(folder / "wide.jpg", fundus(20, 90, (45, 10), 9)),
    }
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # stored sideways: left half red, right half blue
    stored[:, :20] = (220, 30, 30)
    stored[:, 20:] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    paths["rotated"] = write(folder / "rotated.jpg", Image.fromarray(stored), exif=exif, quality=95)
    return paths


def test_odd_valid_images_are_converted_and_cached(tmp_path):
    paths = odd_images(tmp_path)
    assert Image.open(paths["deep"]).mode.startswith("I") and Image.open(paths["cmyk"]).mode == "CMYK"
    # unmasked: the checks below read the photograph's top and bottom rows, which a FOV mask blacks out
    cache = build_cache(records_for(paths.values()), tmp_path / "cache", SIZE, ben_graham=False, num_workers=1,
                        mask="none")
    for name, path in paths.items():
        out = cache.image(path.stem)
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8, name
        np.testing.assert_array_equal(out, preprocess(read_rgb(path), SIZE, False, mask="none"))
    upright = cache.image("rotated").astype(int)  # 20 wide x 40 tall once rotated, padded left and right
    assert upright[2, SIZE // 2, 0] > 150 > upright[2, SIZE // 2, 2]  # top is the stored left half: red
    assert upright[-3, SIZE // 2, 2] > 150 > upright[-3, SIZE // 2, 0]  # bottom: blue
    assert not upright[:, 0].any() and not upright[:, -1].any()


def test_image_cache_pickles_cheaply_and_reads_the_same_pixels(tmp_path, images):
    cache = build_cache(records_for(images), tmp_path, SIZE, ben_graham=True, num_workers=1)
    before = cache.array.copy()  # opens the memory map
    blob = pickle.dumps(cache)
    assert len(blob) < 2_000
    clone = pickle.loads(blob)
    assert (clone.key, clone.path, len(clone)) == (cache.key, cache.path, len(cache))
    np.testing.assert_array_equal(clone.array, before)
    np.testing.assert_array_equal(clone.image(images[2].stem), cache.image(images[2].stem))
