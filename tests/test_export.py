"""``ssl_dr.export``: the TorchScript file predicts what the checkpoint predicts, with torch alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import torch

from ssl_dr.export import EXTRA_FILE
from ssl_dr.export import main as export_main
from tests.test_predict import SUBPROCESS_ENV, TinyRun, one_thread, pipeline_tensors, tiny_run

# Loads the export in a fresh interpreter and proves that neither ssl_dr nor timm was needed.
LOADER = textwrap.dedent("""
    import sys, torch
    model = torch.jit.load(sys.argv[1], map_location="cpu").eval()
    with torch.no_grad():
        torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
    assert not any(m.split(".")[0] in ("ssl_dr", "timm", "lightning") for m in sys.modules), "needs ssl_dr code"
""")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[TinyRun]:
    with one_thread():
        yield tiny_run(tmp_path_factory)


@pytest.mark.filterwarnings(r"ignore:.*torch\.jit:FutureWarning")
def test_export_matches_checkpoint_and_loads_with_torch_only(run, tmp_path):
    out = tmp_path / "export" / "grader.pt"
    export_main([f"ckpt={run.ckpt}", f"out={out}"])
    info = json.loads((tmp_path / "export" / "grader.json").read_text())
    size = run.spec.image_size
    assert info["image_size"] == size and info["input"]["shape"] == ["N", 3, size, size]
    assert info["mean"] == list(run.spec.mean) and info["std"] == list(run.spec.std)
    assert info["preprocess"]["ben_graham"] is run.spec.ben_graham and info["preprocess"]["crop_to_fundus"]
    assert info["preprocess"]["mask"] == run.spec.mask == "rotation_invariant"  # the training default
    assert info["head"] == "classification" and info["output"]["shape"] == ["N", 5]
    assert info["output"]["meaning"].startswith("logits") and len(info["grades"]) == 5

    images = pipeline_tensors(run, run.images[:6], tmp_path / "cache")
    torch.save(images, tmp_path / "images.pt")
    subprocess.run([sys.executable, "-c", LOADER, str(out), str(tmp_path / "images.pt"), str(tmp_path / "out.pt")],
                   check=True, timeout=120, env=SUBPROCESS_ENV)
    exported = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = run.model(images)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(exported.argmax(dim=1), expected.argmax(dim=1))

    extra = {EXTRA_FILE: ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra[EXTRA_FILE]) == info  # the description also travels inside the archive


@pytest.mark.filterwarnings(r"ignore:.*torch\.jit:FutureWarning")
@pytest.mark.parametrize("head", ["ordinal", "regression"])
def test_export_of_other_heads_gives_raw_outputs_and_the_decoding_in_the_json(head, tmp_path_factory, tmp_path):
    """The JSON's decoding rule applied to the exported outputs gives the checkpoint's grades; the regression
    thresholds in it are the checkpoint's tuned buffer."""
    with one_thread():
        other = tiny_run(tmp_path_factory, head)
        out = tmp_path / f"{head}.pt"
        export_main([f"ckpt={other.ckpt}", f"out={out}"])
        info = json.loads(out.with_suffix(".json").read_text())
        images = pipeline_tensors(other, other.images[:6], tmp_path / "cache")
        exported = torch.jit.load(str(out)).eval()
        with torch.no_grad():
            raw, expected = exported(images), other.model(images)
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=1e-5)
    grades = other.model.grading.decode(other.model.grading.activate(expected))
    assert info["head"] == head and info["output"]["shape"] == ["N", other.model.grading.num_outputs]
    if head == "ordinal":
        assert torch.equal((raw > 0).sum(dim=1), grades)  # "number of outputs with sigmoid > 0.5"
        assert info["output"]["probabilities"].startswith("c = [1, cummin(sigmoid(outputs)), 0]")
    else:
        stored = torch.load(other.ckpt, map_location="cpu", weights_only=True)["state_dict"]["grading.thresholds"]
        assert info["output"]["thresholds"] == stored.tolist() and info["output"]["probabilities"] is None
        thresholds = torch.tensor(info["output"]["thresholds"])
        assert torch.equal((raw[:, :1] > thresholds).sum(dim=1), grades)  # "thresholds strictly below"
