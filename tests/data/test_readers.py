"""The CSV reader (APTOS / EyePACS / generic settings) turns a folder into records and reports every problem
in the CSV at once."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_dr.data.csv_source import CsvSource
from ssl_dr.data.decode import read_rgb
from ssl_dr.errors import DataError


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=120 if mode in ("L", "I;16") else None).save(path)


APTOS_TEST = [{"csv": "test.csv", "image_dir": "test_images"}]


def aptos(root: Path) -> CsvSource:
    return CsvSource(root, unlabelled_tables=APTOS_TEST)


def make_folder(root: Path, rows: list[str], test_ids: tuple[str, ...] = ()) -> Path:
    (root / "train_images").mkdir(parents=True)
    (root / "train.csv").write_text("id_code,diagnosis\n" + "\n".join(rows) + "\n")
    for row in rows:
        write_image(root / "train_images" / f"{row.split(',')[0]}.png")
    if test_ids:
        (root / "test.csv").write_text("id_code\n" + "\n".join(test_ids) + "\n")
        for i in test_ids:
            write_image(root / "test_images" / f"{i}.png")
    return root


def test_reads_labelled_and_unlabelled(tmp_path):
    root = make_folder(tmp_path / "aptos", ["a,0", "b,4", "c,2"], test_ids=("t1", "t2"))
    records = aptos(root).load()
    assert [(r.id_code, r.grade) for r in records] == [("a", 0), ("b", 4), ("c", 2), ("t1", None), ("t2", None)]
    assert records[0].path == root / "train_images" / "a.png"
    assert len(CsvSource(root).load()) == 3


def test_missing_root_names_setting(tmp_path):
    with pytest.raises(DataError, match="does not exist: set data.root"):
        aptos(tmp_path / "nope").load()


def test_missing_csv(tmp_path):
    (tmp_path / "train_images").mkdir()
    with pytest.raises(DataError, match="train.csv not found"):
        aptos(tmp_path).load()


def test_missing_column(tmp_path):
    root = make_folder(tmp_path, ["a,0"])
    (root / "train.csv").write_text("id_code,level\na,0\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['diagnosis'\]"):
        aptos(root).load()


def test_all_bad_rows_reported_together(tmp_path):
    root = make_folder(tmp_path, ["a,0", "b,7", "c,", "d,1"])
    (root / "train.csv").write_text("id_code,diagnosis\na,0\nb,7\nc,\nd,1\n../etc,1\nghost,2\n")
    with pytest.raises(DataError) as info:
        aptos(root).load()
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "row 3: diagnosis '7'" in message and "row 4: diagnosis ''" in message
    assert "row 6: id '../etc'" in message and "row 7: no image" in message


@pytest.mark.parametrize("grade", ["2.0", "²", "٣", "-1", " 1e0"])
def test_a_grade_that_is_not_a_plain_integer_gets_the_grade_error(tmp_path, grade):
    root = make_folder(tmp_path, ["a,0", "b,1"])
    (root / "train.csv").write_text(f"id_code,diagnosis\na,0\nb,{grade}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 3: diagnosis .* is not a grade 0-4"):
        aptos(root).load()


def test_duplicate_ids(tmp_path):
    root = make_folder(tmp_path, ["a,0", "b,1"], test_ids=("a",))
    with pytest.raises(DataError, match=r"duplicate id\(s\).*\['a'\]"):
        aptos(root).load()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK"])
def test_odd_image_modes_decode_to_rgb(tmp_path, mode):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    write_image(path, mode, size=(30, 20))
    image = read_rgb(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8


def test_float_images_are_scaled_like_the_others(tmp_path):
    """An "F"-mode TIFF in [0, 1] must not decode black (``convert("RGB")`` alone clips it)."""
    ramp = np.linspace(0.0, 1.0, 30 * 20, dtype=np.float32).reshape(20, 30)
    Image.fromarray(ramp, mode="F").save(tmp_path / "float.tif")
    image = read_rgb(tmp_path / "float.tif")
    assert image.dtype == np.uint8 and image.max() == 255 and image[0, 0, 0] == 0
    Image.fromarray(ramp * 4000, mode="F").save(tmp_path / "wide.tif")  # any range: scaled by its maximum
    assert read_rgb(tmp_path / "wide.tif").max() == 255


def test_palette_images_decode_to_rgb(tmp_path):
    Image.new("RGB", (30, 20), (200, 40, 10)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png")[0, 0].tolist() == [200, 40, 10]


@pytest.mark.parametrize("case", ["truncated", "garbage", "missing"])
def test_the_cache_and_inference_reject_a_file_with_the_same_message(tmp_path, case):
    """One decode path (``ssl_dr.data.decode``): the same files fail, with the same words, in both."""
    from ssl_dr.data.cache import build_cache
    from ssl_dr.data.records import Record
    from ssl_dr.inference import decode_one

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (120, 60, 30)).save(good)
    bad = tmp_path / "bad.png"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[:-40])
    elif case == "garbage":
        bad.write_bytes(b"\x89PNG garbage")
    records = [Record("good", good, 0), Record("bad", bad, 1)]
    with pytest.raises(DataError) as cached:
        build_cache(records, tmp_path / "cache", size=32, ben_graham=False, num_workers=1, mask="none")
    message = decode_one(bad, 32, False, "none")
    assert isinstance(message, str) and str(bad) in message
    if case == "missing":  # the cache lists every missing file up front, in its own words for a listing
        assert "cannot be found" in message and "cannot be found" in str(cached.value)
    else:
        assert message in str(cached.value)
    assert isinstance(decode_one(good, 32, False, "none"), np.ndarray)


def test_unreadable_image_is_named(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        read_rgb(path)


def test_eyepacs_layout_groups_both_eyes(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,2\n13_left,4\n")
    for i in ("10_left", "10_right", "13_left"):
        write_image(tmp_path / "train" / f"{i}.jpeg")
    write_image(tmp_path / "test" / "99_left.jpeg")
    source = CsvSource(tmp_path, csv="trainLabels.csv", image_dir="train", id_column="image", label_column="level",
                       group_pattern=r"^(.+)_(?:left|right)$", unlabelled_dirs=["test"])
    records = source.load()
    assert [(r.id_code, r.grade, r.group) for r in records] == [
        ("10_left", 0, "10"), ("10_right", 2, "10"), ("13_left", 4, "13"), ("99_left", None, None)]
    assert records[0].path.suffix == ".jpeg"


def test_generic_csv_with_group_column_and_extensions(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "export.csv").write_text("file,grade,patient\nx1.tif,1,p1\nx2,3,p1\n")
    write_image(tmp_path / "imgs" / "x1.tif")
    write_image(tmp_path / "imgs" / "x2.JPG")
    records = CsvSource(tmp_path, csv="export.csv", image_dir="imgs", id_column="file", label_column="grade",
                        group_column="patient").load()
    assert [(r.path.name, r.grade, r.group) for r in records] == [("x1.tif", 1, "p1"), ("x2.JPG", 3, "p1")]


def test_missing_configured_column_names_config(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "export.csv").write_text("file,grade\nx1,1\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['patient'\].*data.source"):
        CsvSource(tmp_path, csv="export.csv", image_dir="imgs", id_column="file", label_column="grade",
                  group_column="patient").load()


def test_empty_patient_cells_make_each_image_its_own_patient(tmp_path, caplog):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "export.csv").write_text("file,grade,patient\na,0,p1\nb,1,\nc,2,  \nd,3,NaN\ne,4,p1\n")
    for name in "abcde":
        write_image(tmp_path / "imgs" / f"{name}.png")
    records = CsvSource(tmp_path, csv="export.csv", image_dir="imgs", id_column="file", label_column="grade",
                        group_column="patient").load()
    assert [r.group for r in records] == ["p1", None, None, None, "p1"]  # not one patient called '' or 'nan'
    (record,) = [r for r in caplog.records if r.name == "ssl_dr.data.csv_source"]  # one warning, not one per row
    warning = record.getMessage()
    assert record.levelname == "WARNING" and len(warning.splitlines()) == 1
    assert "3 row(s) of export.csv have an empty patient cell (rows 3 (b), 4 (c), 5 (d))" in warning
