"""The throughput benchmark runs and prints its tables: model only and end to end (real data module, Lightning
modules and trainer config) with the ratio and the projection of the paper's protocol; on the CPU at a toy size
here, the real modes on a GPU."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"
ROW = r"^{name}\s+[\d.]+\s+[\d.]+\s+(?P<ratio>[\d.]+)x\s+(?P<peak>\S+)\s+[\d.]+$"
E2E = (r"^{phase}\s+(?P<rate>[\d.]+)\s+(?P<inputs>[\d.]+)\s+(?P<model>[\d.]+)\s+(?P<ratio>[\d.]+)x\s+"
       r"(?P<loader>[\d.]+)\s+[\d.]+\s+[\d.]+\s+num_workers=(?P<workers>\d+)")
TOY = ["--cpu", "--model", "resnet10t", "--size", "32", "--batch", "4", "--warmup", "1", "--steps", "2", "--no-compile",
       "--threads", "1"]


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


def run_cpu(capsys, monkeypatch, *args: str) -> str:
    threads = torch.get_num_threads()
    try:  # one thread: a busy machine slows oversubscribed intra-op threads tenfold
        return run(capsys, monkeypatch, *TOY, *args)
    finally:
        torch.set_num_threads(threads)


def test_cpu_mode_prints_the_table_with_ratios(capsys, monkeypatch):
    out = run_cpu(capsys, monkeypatch, "--no-e2e")
    assert row(out, "fp32 eager")["ratio"] == "1.00"
    assert float(row(out, "bf16 + channels_last")["ratio"]) > 0
    assert row(out, "fp32 eager")["peak"] == "n/a"  # no GPU memory on the CPU
    assert re.search(r"^bf16 \+ channels_last \+ compile\s+skipped", out, re.M)
    assert re.search(r"^bf16 \+ channels_last vs fp32 eager: [\d.]+x", out, re.M)


def test_cpu_end_to_end_prints_rates_the_ratio_and_the_projection(capsys, monkeypatch):
    out = run_cpu(capsys, monkeypatch, "--n", "16", "--e2e-warmup", "1", "--e2e-steps", "2")
    assert re.search(r"^end to end .*compare: fp32 eager\)", out, re.M)  # trainer=cpu trains in fp32, NCHW
    model_only = float(re.search(r"^fp32 eager\s+([\d.]+)", out, re.M)[1])
    rows = {phase: re.search(E2E.format(phase=phase), out, re.M) for phase in ("fine-tune", "pretext")}
    assert all(rows.values()), out
    assert float(rows["fine-tune"]["model"]) == model_only
    assert float(rows["pretext"]["model"]) == float(re.search(r"^fp32 eager @16\s+([\d.]+)", out, re.M)[1])
    for row in rows.values():
        assert float(row["rate"]) > 0 and float(row["loader"]) > 0
        assert float(row["ratio"]) == pytest.approx(float(row["inputs"]) / float(row["model"]), abs=0.01)
        assert row["workers"] == "0"  # data.num_workers=auto on the CPU
    # both printed to 0.1: 4 x 0.05 + 0.05 of rounding
    assert float(rows["pretext"]["inputs"]) == pytest.approx(4 * float(rows["pretext"]["rate"]), abs=0.3)
    minutes = {m[1]: float(m[2]) for m in re.finditer(r"^  (pretext|fine-tune|total)\b.*?([\d.]+) min$", out, re.M)}
    assert minutes["total"] > minutes["pretext"] + minutes["fine-tune"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_modes_including_compile_report_peak_memory(capsys, monkeypatch):
    out = run(capsys, monkeypatch, "--model", "resnet10t", "--size", "64", "--batch", "16", "--warmup", "2",
              "--steps", "3", "--n", "64", "--e2e-steps", "10")
    for name in ("fp32 eager", "bf16 + channels_last", "bf16 + channels_last + compile"):
        assert float(row(out, name)["peak"]) > 0
    assert re.search(E2E.format(phase="fine-tune"), out, re.M), out  # pinned, with workers on the GPU
