"""Export a fine-tuned grader as TorchScript plus a JSON description of its input pipeline.

``python -m ssl_dr.export ckpt=.../checkpoints/best.ckpt out=grader.pt`` writes ``grader.pt`` and
``grader.json``.

Why TorchScript (``torch.jit.trace``): the exported file runs with ``torch.jit.load`` alone, with no
ssl_dr, Lightning or timm installed (C++ via libtorch too), and needs no extra dependency such as ONNX.
Why the JSON: a model is only correct with the exact preprocessing it was trained with, which the
tensor graph cannot carry (crop to the fundus, pad, resize, optional Ben Graham, then mean/std). It is
also stored inside the archive (``extra_files``: ``ssl_dr.json``), so it cannot get lost.

The model maps ``N x 3 x S x S`` float32 RGB, ``(pixel / 255 - mean) / std``, to the head's raw outputs
(the checkpoint's ``head``; the JSON's ``output`` says how to decode them):

- classification: ``N x 5`` logits; grade = argmax, probabilities = softmax;
- ordinal: ``N x 4`` logits of P(grade >= k), k = 1..4; grade = number of logits > 0 (sigmoid > 0.5);
- regression: ``N x 1`` continuous grade; grade = number of the JSON's ``thresholds`` (tuned on the
  validation split, read from the checkpoint) strictly below it.

Decoding stays outside the graph so the file exposes what the network computes (a user can average TTA
views or re-calibrate) and the thresholds stay readable in the JSON. It is traced in eval mode on the CPU
and checked against the checkpoint on a random batch of another size before it is written.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ssl_dr
from ssl_dr.data import fundus_preprocess as fp
from ssl_dr.data.records import GRADE_NAMES
from ssl_dr.inference import InferenceError, InferenceSpec, arg, load_classifier, read_spec, run_cli, side_file
from ssl_dr.models.heads import GradeHead

FORMAT = "ssl_dr.torchscript/1"
EXTRA_FILE = "ssl_dr.json"
TOLERANCE = 1e-4


@dataclass(kw_only=True)
class ExportArgs:
    """``python -m ssl_dr.export`` arguments."""

    ckpt: Path = arg(help="DRClassifier checkpoint (a run's checkpoints/best.ckpt)")
    out: Path = arg(help="TorchScript file to write (its description goes to the same name with .json)")


def trace(model: nn.Module, image_size: int) -> torch.jit.ScriptModule:
    """Trace backbone + head (eval mode, CPU) and check the trace on a batch of a different size."""
    net = nn.Sequential(model.backbone, model.head).eval().cpu()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad(), _quiet_jit():
        traced = torch.jit.trace(net, torch.randn(2, 3, image_size, image_size, generator=generator))
        check = torch.randn(3, 3, image_size, image_size, generator=generator)
        expected, got = net(check), traced(check)
    if not torch.allclose(expected, got, atol=TOLERANCE, rtol=TOLERANCE):
        raise InferenceError(f"the traced model differs from the checkpoint (max |diff| "
                             f"{(expected - got).abs().max():.2e}); this backbone cannot be traced")
    return traced


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Recent torch (2.14 here) flags ``torch.jit`` as deprecated (FutureWarning) in favour of ``torch.export``.
    It still works, and TorchScript is what the issue asks for (loadable from Python or libtorch/C++ with
    no model code), so the warning would only be noise for the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def description(spec: InferenceSpec, grading: GradeHead, ckpt: Path, model_file: str) -> dict[str, Any]:
    """Everything a user of the exported file needs to feed it and read its output."""
    size = spec.image_size
    return {
        "format": FORMAT,
        "model_file": model_file,
        "input": {"shape": ["N", 3, size, size], "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                  "value": "(uint8 pixel / 255 - mean) / std, per channel"},
        "image_size": size, "mean": list(spec.mean), "std": list(spec.std),
        "preprocess": {
            "steps": ["decode as 8-bit RGB (EXIF orientation applied)",
                      "crop to the fundus: bounding box of rows/columns with more than min_bright_fraction of "
                      "pixels whose channel mean exceeds dark_threshold",
                      "resize the longer side to image_size (INTER_AREA shrinking, INTER_CUBIC enlarging)",
                      "pad with black to a centred image_size x image_size square (with a mask: centred on the "
                      "fitted disc centre instead of the bounding box)",
                      "mask (unless mask is none): black outside the field of view ANDed with its 90/180/270-degree "
                      "rotations (rotation_invariant) or outside the largest centred circle inside it "
                      "(inscribed_circle), shrunk by mask_margin of the radius",
                      "Ben Graham (only if ben_graham): 4*img - 4*GaussianBlur(img, sigma) + 128 with sigma = "
                      "ben_graham_sigma_fraction * image_size, black outside a centred disc of "
                      "ben_graham_radius_fraction * image_size / 2 and where the input was dark"],
            "reference": "ssl_dr.data.fundus_preprocess.preprocess(read_rgb(path), image_size, ben_graham, mask)",
            "mask": spec.mask, "mask_margin": fp.MASK_MARGIN,
            "crop_to_fundus": True, "dark_threshold": fp.DARK_THRESHOLD, "min_bright_fraction": fp.MIN_BRIGHT_FRACTION,
            "ben_graham": spec.ben_graham, "ben_graham_sigma_fraction": fp.SIGMA_FRACTION,
            "ben_graham_radius_fraction": fp.RADIUS_FRACTION},
        "head": grading.name,
        "output": {"shape": ["N", grading.num_outputs], **grading.decoding(),
                   "tta": "none applied (average the views' probabilities, or the regression score, then decode)"},
        "grades": dict(enumerate(GRADE_NAMES)),
        "backbone": spec.backbone,
        "checkpoint": str(ckpt.resolve()),
        "ssl_dr_version": _version(), "ssl_dr_commit": _commit(), "torch_version": torch.__version__,
    }


def _version() -> str | None:
    try:
        return metadata.version("ssl_dr")
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The git commit of the ssl_dr source, when it is a checkout (``+dirty`` with uncommitted changes)."""
    source = Path(ssl_dr.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def export(args: ExportArgs) -> Path:
    """Write ``args.out`` (TorchScript) and its ``.json`` description; return the JSON's path."""
    spec = read_spec(args.ckpt)
    model = load_classifier(args.ckpt, spec)
    traced = trace(model, spec.image_size)
    info = json.dumps(description(spec, model.grading, args.ckpt, args.out.name), indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_jit():
        torch.jit.save(traced, str(args.out), _extra_files={EXTRA_FILE: info})
    json_path = side_file(args.out, ".json")
    json_path.write_text(info + "\n")
    print(f"[ssl_dr] TorchScript grader (N x 3 x {spec.image_size} x {spec.image_size} -> N x "
          f"{model.grading.num_outputs}, {model.grading.name} head) -> {args.out}; preprocessing and decoding: "
          f"{json_path}")
    return json_path


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(export, ExportArgs, "ssl_dr.export", argv)


if __name__ == "__main__":
    main()
