"""benchmarks/features.py runs on a tiny folder and prints the images/s of both extractors."""

from __future__ import annotations

import importlib.util
import re

import torch

from tests.conftest import REPO
from tests.data.test_cache import fundus, write

SCRIPT = REPO / "benchmarks" / "features.py"


def test_the_benchmark_prints_images_per_second(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        write(folder / f"eye{i}.png", fundus(40, 48, (24, 20), 18, seed=i))
    spec = importlib.util.spec_from_file_location("features_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main(["--images", str(folder), "--n", "4", "--size", "32", "--model", "resnet10t", "--batch", "2",
                     "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # the script sets it for this whole process
    out = capsys.readouterr().out
    assert re.search(r"^4 images from .* at 32 px; torch threads 1", out, re.M), out
    assert re.search(r"^features \(resnet10t, 512-d, batch 2\): [\d.]+ s, [\d.]+ images/s$", out, re.M), out
    assert re.search(r"^classical \(1088-d\): [\d.]+ s, [\d.]+ images/s$", out, re.M), out
