"""``ssl_dr.export``: the ``.pt2`` (torch.export) and ``.onnx`` files predict what the checkpoint predicts, on
images preprocessed as their JSON says, with torch alone (``.pt2``) or without torch (``.onnx``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import ssl_dr.export as export_module
from ssl_dr.data.decode import read_rgb
from ssl_dr.data.fundus_preprocess import preprocess
from ssl_dr.data.records import GRADE_NAMES
from ssl_dr.export import EXTRA_FILE, ONNX_PACKAGES
from ssl_dr.export import main as export_main
from ssl_dr.inference.checkpoint import Screening
from ssl_dr.predict import PROB_COLUMNS, REFERABLE_COLUMN, REFERABLE_SCORE_COLUMN
from ssl_dr.predict import main as predict_main
from tests.tiny_grader import (
    SUBPROCESS_ENV,
    TinyRun,
    one_thread,
    pipeline_tensors,
    screening_payload,
    tiny_run,
    with_screening,
)

IMAGES = 20
CLEAN = ("ssl_dr", "timm", "lightning")  # modules the exported files must not need

# Each loader runs the export in a fresh interpreter and proves what it did not import.
PT2_LOADER = textwrap.dedent("""
    import sys, torch
    model = torch.export.load(sys.argv[1]).module()
    with torch.no_grad():
        torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
    assert not any(m.split(".")[0] in ("ssl_dr", "timm", "lightning") for m in sys.modules), "needs ssl_dr code"
""")
ONNX_LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime
    session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    (name,), (output,) = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    np.save(sys.argv[3], session.run([output], {name: np.load(sys.argv[2])})[0])
    meta = session.get_modelmeta().custom_metadata_map
    json.dump({"input": name, "output": output, "ssl_dr.json": meta["ssl_dr.json"]}, open(sys.argv[4], "w"))
    assert not any(m.split(".")[0] in ("torch", "ssl_dr", "timm", "lightning") for m in sys.modules), "needs torch"
""")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[TinyRun]:
    with one_thread():
        yield tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predicted(run, tmp_path_factory) -> tuple[list[Path], pd.DataFrame]:
    """The checkpoint's predictions on 20 images, by ``python -m ssl_dr.predict`` (grades and probabilities)."""
    folder = tmp_path_factory.mktemp("export-images")
    paths = [Path(shutil.copy(path, folder / path.name)) for path in run.images[:IMAGES]]
    out = folder.parent / f"{folder.name}-predictions.csv"
    with one_thread():
        predict_main([f"ckpt={run.ckpt}", f"images={folder}", f"out={out}", "device=cpu", "probs=true"])
    return paths, pd.read_csv(out, dtype={"id_code": str})


def json_recipe(info: dict[str, Any], paths: list[Path]) -> torch.Tensor:
    """The network's input built only from what the JSON says (docs/inference.md's example)."""
    pre = info["preprocess"]
    mean, std = (torch.tensor(info[key])[:, None, None] for key in ("mean", "std"))
    pixels = [preprocess(read_rgb(path), info["image_size"], pre["ben_graham"], pre["mask"]) for path in paths]
    return torch.stack([(torch.from_numpy(p).permute(2, 0, 1).float() / 255 - mean) / std for p in pixels])


def assert_same_predictions(raw: torch.Tensor, table: pd.DataFrame, paths: list[Path]) -> None:
    assert list(table.id_code) == [p.stem for p in paths]
    np.testing.assert_allclose(raw.softmax(dim=1).numpy(), table[PROB_COLUMNS].to_numpy(), atol=1e-5)
    np.testing.assert_array_equal(raw.argmax(dim=1).numpy(), table.diagnosis.to_numpy())


def check_description(info: dict[str, Any], run: TinyRun, out: Path, fmt: str) -> None:
    size = run.spec.image_size
    assert info["format"] == fmt and info["model_file"] == out.name and info["load"]
    assert info["image_size"] == size and info["input"]["shape"] == ["N", 3, size, size]
    assert info["mean"] == list(run.spec.mean) and info["std"] == list(run.spec.std)
    assert info["preprocess"]["ben_graham"] is run.spec.ben_graham and info["preprocess"]["crop_to_fundus"]
    assert info["preprocess"]["mask"] == run.spec.mask == "rotation_invariant"  # the training default
    assert info["head"] == "classification" and info["output"]["shape"] == ["N", 5]
    assert info["output"]["meaning"].startswith("logits")
    assert info["grades"] == {str(grade): name for grade, name in enumerate(GRADE_NAMES)}  # the records' scale


def test_pt2_export_predicts_what_the_checkpoint_predicts_with_torch_only(run, predicted, tmp_path):
    paths, table = predicted
    out = tmp_path / "export" / "grader.pt2"
    export_main([f"ckpt={run.ckpt}", f"out={out}"])
    info = json.loads((tmp_path / "export" / "grader.json").read_text())
    check_description(info, run, out, "ssl_dr.torch_export/1")

    images = json_recipe(info, paths)
    torch.testing.assert_close(images, pipeline_tensors(run, paths, tmp_path / "cache"), atol=1e-5, rtol=0)
    torch.save(images, tmp_path / "images.pt")
    subprocess.run([sys.executable, "-c", PT2_LOADER, str(out), str(tmp_path / "images.pt"), str(tmp_path / "out.pt")],
                   check=True, timeout=120, env=SUBPROCESS_ENV)
    exported = torch.load(tmp_path / "out.pt")
    assert exported.shape == (IMAGES, 5)  # traced at 2, run at 20: the batch size is dynamic
    assert_same_predictions(exported, table, paths)
    with torch.no_grad():
        torch.testing.assert_close(exported, run.model(images), atol=1e-5, rtol=1e-5)

    extra = {EXTRA_FILE: ""}
    torch.export.load(out, extra_files=extra)
    assert json.loads(extra[EXTRA_FILE]) == info  # the description also travels inside the file


def test_the_json_carries_the_stored_temperature_and_operating_point_and_the_network_stays_raw(run, predicted,
                                                                                             tmp_path):
    """A deployer applying the JSON's calibration and referable entries to the exported outputs gets what
    ``predict`` writes for the same checkpoint; the exported network itself gives the untempered logits."""
    paths, _ = predicted
    images = pipeline_tensors(run, paths, tmp_path / "cache")
    with torch.no_grad():
        logits = run.model(images)
    scores = (logits / 1.7).softmax(dim=1)[:, 2:].sum(dim=1).sort().values
    threshold = float(scores[IMAGES // 2 - 1: IMAGES // 2 + 1].mean())
    ckpt = with_screening(run.ckpt, tmp_path / "screened.ckpt",
                          screening_payload(1.7, threshold, {"sensitivity": 0.9}))
    out = tmp_path / "grader.pt2"
    with one_thread():
        export_main([f"ckpt={ckpt}", f"out={out}"])
        predict_main([f"ckpt={ckpt}", f"images={paths[0].parent}", f"out={tmp_path / 'p.csv'}", "device=cpu",
                      "probs=true", "referable=true"])
    info, table = json.loads(out.with_suffix(".json").read_text()), pd.read_csv(tmp_path / "p.csv")
    assert info["calibration"]["temperature"] == 1.7 and "raw grader" in info["calibration"]["applied"]
    assert info["calibration"]["probabilities"].startswith("softmax(outputs / temperature)")
    assert (info["referable"]["threshold"], info["referable"]["target"]) == (threshold, {"sensitivity": 0.9})
    assert info["referable"]["score"].startswith("softmax(outputs / temperature)[:, 2:].sum(1)")
    with torch.no_grad():
        raw = torch.export.load(out).module()(images)
    torch.testing.assert_close(raw, logits, atol=1e-5, rtol=1e-5)
    probs = (raw / info["calibration"]["temperature"]).softmax(dim=1)
    np.testing.assert_allclose(probs.numpy(), table[PROB_COLUMNS].to_numpy(), atol=1e-5)
    score = probs[:, 2:].sum(dim=1).numpy()
    np.testing.assert_allclose(score, table[REFERABLE_SCORE_COLUMN].to_numpy(), atol=1e-5)
    np.testing.assert_array_equal((score >= info["referable"]["threshold"]).astype(int), table[REFERABLE_COLUMN])


@pytest.mark.parametrize("screening, entries", [
    (None, {}),  # a checkpoint written before screening settings were stored: the JSON as before
    (Screening(None, float("nan"), None), {}),
    (Screening(None, float("nan"), {"specificity": 0.8}), {"referable": {
        "score": "softmax(outputs)[:, 2:].sum(1): P(grade >= 2)", "threshold": None, "target": {"specificity": 0.8}}}),
])
def test_the_json_has_no_calibration_without_a_temperature_and_no_nan_threshold(screening, entries, run):
    info = export_module.description(run.spec, run.model.grading, run.ckpt, Path("grader.pt2"), screening)
    assert {key: {k: info[key][k] for k in entries[key]} for key in ("calibration", "referable") if key in info} \
        == entries
    text = json.dumps(info)
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    if screening is None:
        assert info == export_module.description(run.spec, run.model.grading, run.ckpt, Path("grader.pt2"))


@pytest.mark.e2e  # ~12 s (the ONNX conversion): the e2e tier
def test_onnx_export_predicts_what_the_checkpoint_predicts_without_torch(run, predicted, tmp_path):
    for package in ONNX_PACKAGES:
        pytest.importorskip(package)
    paths, table = predicted
    out = tmp_path / "grader.onnx"
    with one_thread():
        export_main([f"ckpt={run.ckpt}", f"out={out}"])
    info = json.loads((tmp_path / "grader.json").read_text())
    check_description(info, run, out, "ssl_dr.onnx/1")

    np.save(tmp_path / "images.npy", json_recipe(info, paths).numpy())
    files = [str(out), *(str(tmp_path / name) for name in ("images.npy", "out.npy", "meta.json"))]
    subprocess.run([sys.executable, "-c", ONNX_LOADER, *files], check=True, timeout=120, env=SUBPROCESS_ENV)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["input"], meta["output"]) == (info["input"]["name"], info["output"]["name"]) == ("image", "outputs")
    assert json.loads(meta["ssl_dr.json"]) == info
    assert_same_predictions(torch.from_numpy(np.load(tmp_path / "out.npy")), table, paths)


@pytest.mark.e2e  # ~12 s each (a tiny training run per head): the e2e tier
@pytest.mark.parametrize("head", ["ordinal", "regression"])
def test_export_of_other_heads_gives_raw_outputs_and_the_decoding_in_the_json(head, tmp_path_factory, tmp_path):
    """The JSON's decoding rule applied to the exported outputs gives the checkpoint's grades; the regression
    thresholds in it are the checkpoint's tuned buffer."""
    with one_thread():
        other = tiny_run(tmp_path_factory, head)
        out = tmp_path / f"{head}.pt2"
        export_main([f"ckpt={other.ckpt}", f"out={out}"])
        info = json.loads(out.with_suffix(".json").read_text())
        images = pipeline_tensors(other, other.images[:IMAGES], tmp_path / "cache")
        exported = torch.export.load(out).module()
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


@pytest.mark.parametrize("name, message", [
    ("grader.pt", r"name the file \.pt2 \(torch\.export\) or \.onnx \(ONNX\) \(TorchScript export is gone"),
    ("grader", r"name the file \.pt2"),
])
def test_a_file_name_without_a_supported_suffix_is_refused_before_the_checkpoint_is_read(name, message, tmp_path,
                                                                                         capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main([f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / name}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


@pytest.mark.parametrize("code, named", [
    ({"commit": "a" * 40, "dirty": False, "reason": None}, "a" * 40),
    ({"commit": "a" * 40, "dirty": True, "reason": None}, "a" * 40 + "+dirty"),
    ({"commit": "unknown", "dirty": None, "reason": "git is not installed"}, None),
])
def test_the_export_names_the_commit_that_the_run_environment_names(code, named, monkeypatch):
    """One git probe for runs and exports: an export's ssl_dr_commit is environment.json's commit, marked
    dirty alike, and None (not the word "unknown") where the source is not a checkout."""
    monkeypatch.setattr(export_module, "loaded_code", lambda: code)
    assert export_module._commit() == named


def test_onnx_without_its_packages_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_module, "find_spec", lambda name: None if name == "onnxscript" else object())
    with pytest.raises(SystemExit):
        export_main([f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'grader.onnx'}"])
    assert 'needs onnxscript: pip install "ssl_dr[onnx]"' in capsys.readouterr().err


def test_an_export_that_disagrees_with_the_checkpoint_is_not_left_on_disk(run, tmp_path, capsys, monkeypatch):
    """The check runs on the file as written and read back; a file that fails it is removed."""
    def wrong(net, image_size, out, info):
        out.write_bytes(b"half-written")
        return lambda x: net(x) + 1.0

    monkeypatch.setitem(export_module.WRITERS, ".pt2", wrong)
    out = tmp_path / "grader.pt2"
    with pytest.raises(SystemExit):
        export_main([f"ckpt={run.ckpt}", f"out={out}"])
    assert "the exported model differs from the checkpoint" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.e2e  # ~25 s (an MAE pretext and a ViT fine-tune, then the export): the e2e tier
def test_a_vit_grader_exports_and_predicts_what_its_checkpoint_predicts(tiny_cfg, tmp_path):
    """The ViT arms (issue 22): a ViT grader's .pt2 rebuilds its input from grader.json alone (ImageNet or timm
    statistics, the run's size) and gives the checkpoint's outputs on 20 images."""
    from ssl_dr.inference import load_classifier, read_spec
    from ssl_dr.train import train

    with one_thread():
        result = train(tiny_cfg("experiment=mae"))
        ckpt = Path(result["output_dir"]) / "checkpoints" / "best.ckpt"
        out = tmp_path / "vit" / "grader.pt2"
        export_main([f"ckpt={ckpt}", f"out={out}"])
    info = json.loads((tmp_path / "vit" / "grader.json").read_text())
    images = json_recipe(info, sorted(tmp_path.glob("data/*/*_images/*.png"))[:IMAGES])
    assert info["image_size"] == 32 and images.shape == (IMAGES, 3, 32, 32)
    exported = torch.export.load(out).module()(images)
    with torch.no_grad():
        expected = load_classifier(ckpt, read_spec(ckpt))(images)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)
