"""The APTOS reader turns a folder into records and reports every problem in the CSV at once."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_dr.data.aptos import AptosSource
from ssl_dr.data.datasets import read_rgb
from ssl_dr.data.records import DataError


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=120 if mode in ("L", "I;16") else None).save(path)


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
    records = AptosSource(root).load()
    assert [(r.id_code, r.grade) for r in records] == [("a", 0), ("b", 4), ("c", 2), ("t1", None), ("t2", None)]
    assert records[0].path == root / "train_images" / "a.png"
    assert len(AptosSource(root, use_unlabelled=False).load()) == 3


def test_missing_root_names_setting(tmp_path):
    with pytest.raises(DataError, match="does not exist: set data.source.root"):
        AptosSource(tmp_path / "nope").load()


def test_missing_csv(tmp_path):
    (tmp_path / "train_images").mkdir()
    with pytest.raises(DataError, match="train.csv not found"):
        AptosSource(tmp_path).load()


def test_missing_column(tmp_path):
    root = make_folder(tmp_path, ["a,0"])
    (root / "train.csv").write_text("id_code,level\na,0\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['diagnosis'\]"):
        AptosSource(root).load()


def test_all_bad_rows_reported_together(tmp_path):
    root = make_folder(tmp_path, ["a,0", "b,7", "c,", "d,1"])
    (root / "train.csv").write_text("id_code,diagnosis\na,0\nb,7\nc,\nd,1\n../etc,1\nghost,2\n")
    with pytest.raises(DataError) as info:
        AptosSource(root).load()
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "row 3: diagnosis '7'" in message and "row 4: diagnosis ''" in message
    assert "row 6: id_code '../etc'" in message and "row 7: no image" in message


def test_duplicate_ids(tmp_path):
    root = make_folder(tmp_path, ["a,0", "b,1"], test_ids=("a",))
    with pytest.raises(DataError, match=r"duplicate id_code\(s\).*\['a'\]"):
        AptosSource(root).load()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK"])
def test_odd_image_modes_decode_to_rgb(tmp_path, mode):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    write_image(path, mode, size=(30, 20))
    image = read_rgb(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8


def test_unreadable_image_is_named(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        read_rgb(path)
