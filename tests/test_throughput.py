"""The throughput benchmark runs and prints its table: on the CPU at a toy size here, the real modes on a GPU."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"
ROW = r"^{name}\s+[\d.]+\s+[\d.]+\s+(?P<ratio>[\d.]+)x\s+(?P<peak>\S+)\s+[\d.]+$"


def run(capsys, monkeypatch, *args: str) -> str:
    """The script's ``main`` in this process (benchmarks/ is not a package; torch is already imported)."""
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "throughput", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.main(list(args))
    return capsys.readouterr().out


def row(output: str, name: str) -> re.Match:
    match = re.search(ROW.format(name=re.escape(name)), output, re.M)
    assert match, f"no row for {name!r} in:\n{output}"
    return match


def test_cpu_mode_prints_the_table_with_ratios(capsys, monkeypatch):
    threads = torch.get_num_threads()
    try:  # one thread: a busy machine slows oversubscribed intra-op threads tenfold
        out = run(capsys, monkeypatch, "--cpu", "--model", "resnet10t", "--size", "32", "--batch", "4",
                  "--warmup", "1", "--steps", "2", "--no-compile", "--threads", "1")
    finally:
        torch.set_num_threads(threads)
    assert row(out, "fp32 eager")["ratio"] == "1.00"
    assert float(row(out, "bf16 + channels_last")["ratio"]) > 0
    assert row(out, "fp32 eager")["peak"] == "n/a"  # no GPU memory on the CPU
    assert re.search(r"^bf16 \+ channels_last \+ compile\s+skipped", out, re.M)
    assert re.search(r"^bf16 \+ channels_last vs fp32 eager: [\d.]+x", out, re.M)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_modes_including_compile_report_peak_memory(capsys, monkeypatch):
    out = run(capsys, monkeypatch, "--model", "resnet10t", "--size", "64", "--batch", "16", "--warmup", "2",
              "--steps", "3")
    for name in ("fp32 eager", "bf16 + channels_last", "bf16 + channels_last + compile"):
        assert float(row(out, name)["peak"]) > 0
