"""The ImageNet arm: timm's DenseNet121 ImageNet weights from a local file (or the hub), one clear error
when they cannot be had, and a fine-tune that really starts from them.

No test downloads anything: the weights are a randomly filled DenseNet121 checkpoint written to tmp_path,
the network is cut off where a test could reach for it, and the hub is only ever asked in offline mode.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ssl_dr.errors import ConfigError
from ssl_dr.models.backbone import Backbone, BackboneWeightsError
from ssl_dr.train import train
from ssl_dr.training.arms import check_init, weights_source
from tests.conftest import TINY, compose_cfg

HUB_ID = "timm/densenet121.tv_in1k"
_TORCHVISION_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|conv))([12])\.(weight|bias|running_mean|running_var)$")


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    """A full DenseNet121 ImageNet-style state dict (classifier included) whose every tensor, BatchNorm
    statistics too, differs from a fresh init: equality after loading proves it came from the file."""
    gen = torch.Generator().manual_seed(0)
    state = timm.create_model("densenet121").state_dict()
    filled = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            filled[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            filled[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            filled[key] = torch.randn(value.shape, generator=gen) * 0.05
    return filled


@pytest.fixture(scope="module")
def weights_files(imagenet_state, tmp_path_factory) -> dict[str, Path]:
    """The same weights as timm .pth, .safetensors and torchvision's original .pth layout
    (``denselayerN.norm.1.weight``, no ``num_batches_tracked``) that timm maps on load."""
    folder = tmp_path_factory.mktemp("imagenet")
    files = {"pth": folder / "densenet121.pth", "safetensors": folder / "model.safetensors",
             "torchvision": folder / "densenet121-torchvision.pth"}
    torch.save(imagenet_state, files["pth"])
    save_file(imagenet_state, str(files["safetensors"]))
    torch.save({_TORCHVISION_KEY.sub(r"\1.\2.\3", k): v for k, v in imagenet_state.items()
                if not k.endswith("num_batches_tracked")}, files["torchvision"])
    return files


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or reach an internet host fails the test (local sockets stay usable)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """Hugging Face hub in offline mode with an empty cache (it is read at import, so patch it too)."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: str = "^$") -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state) - {"classifier.weight", "classifier.bias"}  # head dropped, nothing else
    for key, value in loaded.items():
        if not re.search(skip, key):
            assert torch.equal(value, state[key]), key


# --- the backbone -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pth", "safetensors", "torchvision"])
def test_backbone_weights_equal_the_file(kind, weights_files, imagenet_state, no_network):
    path = weights_files[kind]
    backbone = Backbone("densenet121", pretrained=True, pretrained_tag="tv_in1k", weights_file=path)
    # torchvision's file has no num_batches_tracked: those buffers start at 0, as torchvision's would
    assert_same_weights(backbone.model, imagenet_state, skip="num_batches_tracked" if kind == "torchvision" else "^$")
    assert backbone.weights_source == str(path.resolve())
    assert backbone.num_features == 1024
    assert backbone.normalization() == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


def test_default_backbone_never_touches_the_network(tmp_path, no_network, monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("SSL_DR_IMAGENET_WEIGHTS", "/nowhere/weights.pth")  # only the imagenet arm reads it
    for arm in ("rotation", "baseline"):
        cfg = compose_cfg(tmp_path, [f"arm={arm}"])
        assert cfg.model.backbone.pretrained is False and cfg.model.backbone.weights_file is None
        assert instantiate(cfg.model.backbone).weights_source is None


@pytest.mark.parametrize("make,message", [
    (lambda d, sd: d / "absent.pth", "not found"),
    (lambda d, sd: d, "is a folder, not a file"),
    (lambda d, sd: _write(d / "empty.pth", b""), "cannot be read as weights"),
    (lambda d, sd: _write(d / "text.pth", b"not a checkpoint"), "cannot be read as weights"),
    (lambda d, sd: _write(d / "cut.safetensors", b"\x08" + b"\x00" * 7 + b"{"), "cannot be read as weights"),
    (lambda d, sd: _save(d / "resnet.pth", timm.create_model("resnet10t").state_dict()),
     r"holds no densenet121.tv_in1k weights \(missing key\(s\): 606"),
    (lambda d, sd: _save(d / "headless.pth", {k: v for k, v in sd.items() if not k.startswith("classifier")}),
     r"missing key\(s\): 2, e.g. classifier.weight"),
    (lambda d, sd: _save(d / "best.ckpt", {"state_dict": {f"backbone.model.{k}": v for k, v in sd.items()}}),
     r"unexpected key\(s\): \d+, e.g. backbone.model.features.conv0.weight"),
])
def test_bad_file_is_one_clear_error(make, message, imagenet_state, tmp_path, no_network):
    path = make(tmp_path, imagenet_state)
    with pytest.raises(BackboneWeightsError, match=message) as caught:
        Backbone("densenet121", pretrained=True, pretrained_tag="tv_in1k", weights_file=path)
    text = str(caught.value)
    assert text.startswith("model.backbone.weights_file=") and str(path) in text and "\n" not in text
    assert HUB_ID in text  # what to pass instead


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _save(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def test_no_file_offline_names_the_hub_and_the_fix(hub_offline, no_network):
    with pytest.raises(BackboneWeightsError) as caught:
        Backbone("densenet121", pretrained=True, pretrained_tag="tv_in1k")
    text = str(caught.value)
    assert f"model.backbone.weights_file is not set and {HUB_ID} cannot be fetched" in text
    assert "HF_HUB_OFFLINE is set" in text
    assert f"hf download {HUB_ID} model.safetensors" in text and "model.backbone.weights_file=<dir>/" in text


def test_unknown_tag_is_refused(weights_files):
    with pytest.raises(BackboneWeightsError, match="no pretrained weights densenet121.nope"):
        Backbone("densenet121", pretrained=True, pretrained_tag="nope", weights_file=weights_files["pth"])


def test_other_arms_never_read_the_weights_file(tmp_path, no_network):
    """A sweep over arms may name the file once for all of them: only the imagenet arm reads it."""
    from hydra.utils import instantiate

    missing = tmp_path / "absent.safetensors"
    for arm in ("rotation", "baseline"):
        cfg = compose_cfg(tmp_path, [f"arm={arm}", f"model.backbone.weights_file={missing}"])
        check_init(cfg)
        assert instantiate(cfg.model.backbone).weights_source is None
    with pytest.raises(BackboneWeightsError, match="not found"):
        weights_source(compose_cfg(tmp_path, ["arm=imagenet", f"model.backbone.weights_file={missing}"]))


# --- config -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["experiment=imagenet", "arm=imagenet"])
def test_imagenet_config(choice, tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_DR_IMAGENET_WEIGHTS", raising=False)
    cfg = compose_cfg(tmp_path, [choice])
    assert (cfg.arm, cfg.init) == ("imagenet", "imagenet")
    backbone = cfg.model.backbone
    assert (backbone.name, backbone.pretrained, backbone.pretrained_tag, backbone.weights_file) == \
        ("densenet121", True, "tv_in1k", None)
    check_init(cfg)

    monkeypatch.setenv("SSL_DR_IMAGENET_WEIGHTS", "/data/weights/model.safetensors")
    assert compose_cfg(tmp_path, [choice]).model.backbone.weights_file == "/data/weights/model.safetensors"
    explicit = compose_cfg(tmp_path, [choice, "model.backbone.weights_file=/other.pth"])
    assert explicit.model.backbone.weights_file == "/other.pth"  # the command line wins over the variable


@pytest.mark.parametrize("overrides,message", [
    (["experiment=imagenet", "model.backbone.pretrained=false"], "init=imagenet needs model.backbone.pretrained"),
    (["experiment=baseline", "model.backbone.pretrained=true"], "init=random but model.backbone.pretrained=true"),
    (["experiment=baseline", "init=imagenetx"], "init='imagenetx' is not one of"),
])
def test_init_and_pretrained_must_agree(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        check_init(compose_cfg(tmp_path, overrides))


# --- end to end -------------------------------------------------------------------------------------------


def test_imagenet_arm_end_to_end(tiny_cfg, weights_files, imagenet_state, no_network):
    """A frozen encoder for the whole (2-step) budget, a linear probe: the tested checkpoint's backbone is
    exactly the file's, so the fine-tune started from it (no pretext, nothing else in between); inference
    rebuilds it without any download."""
    from ssl_dr.inference import load_classifier, read_spec

    path = weights_files["safetensors"]
    metrics = train(tiny_cfg("experiment=imagenet", f"model.backbone.weights_file={path}", "trainer.max_steps=2",
                             "model.classifier.freeze_steps=2", run="imagenet"))
    out = Path(metrics["output_dir"])
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["arm"], saved["init"], saved["init/weights"]) == ("imagenet", "imagenet", str(path.resolve()))
    assert "test/qwk" in saved and not any(k.startswith("pretext/") for k in saved)
    assert not (out / "pretext").exists()

    ckpt = out / "checkpoints" / "best.ckpt"
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    backbone = {k.removeprefix("backbone.model."): v for k, v in payload["state_dict"].items()
                if k.startswith("backbone.model.")}
    assert backbone.keys() == set(imagenet_state) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(v, imagenet_state[k]) for k, v in backbone.items())
    inference = payload["hyper_parameters"]["inference"]
    assert (tuple(inference["mean"]), tuple(inference["std"])) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)

    model = load_classifier(ckpt, read_spec(ckpt))  # predict/export/explain path: random init, then ckpt
    assert torch.equal(model.backbone.model.features.conv0.weight, imagenet_state["features.conv0.weight"])


def test_a_job_reads_its_weights_file_once(tiny_cfg, weights_files, no_network, monkeypatch):
    """The early check's tensors go to the fine-tune's build, which then reads no file; its numbers are those of
    reading the file twice (the build after seeding draws the same random numbers), and nothing stays kept."""
    import contextlib

    import safetensors.torch

    from ssl_dr.models import weights_memo
    from ssl_dr.training import arms

    path = weights_files["safetensors"]
    reads: list[Path] = []
    real_load = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file",
                        lambda file, *args, **kwargs: (reads.append(Path(file)), real_load(file, *args, **kwargs))[1])
    overrides = ("experiment=imagenet", f"model.backbone.weights_file={path}")
    once = train(tiny_cfg(*overrides, run="once"))
    assert reads == [path.resolve()] and weights_memo._KEPT.state is None
    monkeypatch.setattr(arms, "keeping_reads", contextlib.nullcontext)  # the check keeps nothing: read again
    twice = train(tiny_cfg(*overrides, run="twice"))
    assert reads == [path.resolve()] * 3

    def scores(metrics: dict) -> str:
        return json.dumps({k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}, sort_keys=True)

    assert "test/qwk" in once and "val/loss" in once and scores(once) == scores(twice)
    for name in ("test_predictions.csv", "val_predictions.csv"):
        assert (Path(once["output_dir"]) / name).read_text() == (Path(twice["output_dir"]) / name).read_text()


# --- the command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights,message", [
    (None, f"error: model.backbone.weights_file is not set and {HUB_ID} cannot be fetched from the Hugging Face hub"),
    ("garbage.pth", "error: model.backbone.weights_file={path} cannot be read as weights"),
    ("resnet.pth", "error: model.backbone.weights_file={path} holds no densenet121.tv_in1k weights"),
])
@pytest.mark.e2e
def test_cli_without_usable_weights_ends_in_one_line(weights, message, tmp_path):
    """Offline and no file, an unreadable file, another network's file: exit 2, one line, before any data."""
    path = None if weights is None else tmp_path / weights
    if weights == "garbage.pth":
        path.write_bytes(b"not a checkpoint")
    elif weights == "resnet.pth":
        torch.save(timm.create_model("resnet10t").state_dict(), path)
    env = {k: v for k, v in os.environ.items() if k != "SSL_DR_IMAGENET_WEIGHTS"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), WANDB_MODE="disabled")
    extra = [] if path is None else [f"model.backbone.weights_file={path}"]
    result = subprocess.run([sys.executable, "-m", "ssl_dr.train", "experiment=imagenet", *TINY, *extra],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message.format(path=path)), result.stderr[-3000:]
    assert HUB_ID in errors[0] and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("split.csv")) and not list(tmp_path.rglob("*.ckpt"))  # stopped before any data


def test_weights_file_does_not_change_other_arms_pretext_key(tiny_cfg):
    from ssl_dr.pretexts.store import pretext_description, pretext_key

    keys = {pretext_key(pretext_description(tiny_cfg("experiment=rotation", *extra), []))
            for extra in ([], ["model.backbone.weights_file=/x/densenet121.safetensors"],
                          ["model.backbone.pretrained_tag=ra_in1k"])}
    assert len(keys) == 1
    changed = tiny_cfg("experiment=rotation", "pretext.max_epochs=7")
    assert pretext_key(pretext_description(changed, [])) not in keys
