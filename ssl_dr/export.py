"""Export a fine-tuned grader through a supported route, plus a JSON description of its input pipeline.

``python -m ssl_dr.export ckpt=.../checkpoints/best.ckpt out=grader.pt2`` writes ``grader.pt2`` and ``grader.json``;
the suffix of ``out`` picks the route: ``.pt2`` (``torch.export``: runs with torch alone, and AOTInductor compiles
it for C++) or ``.onnx`` (runs without torch; needs the ``onnx`` extra). ``.pt`` (TorchScript, deprecated) is
refused with a pointer to the two. The graph maps normalised ``N x 3 x S x S`` images to the head's raw outputs;
what it cannot carry (the preprocessing, the decoding rule, the calibration and the referable threshold) goes in
the JSON, which is also stored inside the file. Before reporting success the exported program is read back and
checked against the checkpoint on a batch of another size. Formats, decoding and an example: docs/inference.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_dr.data import fundus_preprocess as fp
from ssl_dr.data.records import GRADE_NAMES
from ssl_dr.inference import InferenceError, InferenceSpec, arg, load_classifier, run_cli, side_file
from ssl_dr.inference.checkpoint import Screening, read_checkpoint
from ssl_dr.models.heads import GradeHead
from ssl_dr.training.environment import loaded_code

# suffix of out= -> format name written to the JSON
FORMATS = {".pt2": "ssl_dr.torch_export/1", ".onnx": "ssl_dr.onnx/1"}
# how to run each (written to the JSON's "load")
LOADERS = {".pt2": "torch.export.load(model_file).module()(x): torch only; the graph was captured in eval mode "
                   "(the loaded module refuses .eval())",
           ".onnx": "onnxruntime.InferenceSession(model_file).run(['outputs'], {'image': x})[0]: no torch needed"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
EXTRA_FILE = "ssl_dr.json"
INPUT_NAME, OUTPUT_NAME = "image", "outputs"
# head -> its referable-DR score (what the stored threshold applies to), from the raw outputs
REFERABLE_SCORES = {"classification": "softmax({logits})[:, 2:].sum(1): P(grade >= 2)",
                    "ordinal": "sigmoid(outputs[:, 1]): P(grade >= 2)",
                    "regression": "outputs[:, 0]: the continuous grade"}
RAW_NETWORK = "not applied inside the model file: its outputs are the raw grader's"
TOLERANCE = 1e-4


@dataclass(kw_only=True)
class ExportArgs:
    """``python -m ssl_dr.export`` arguments."""

    ckpt: Path = arg(help="DRClassifier checkpoint (a run's checkpoints/best.ckpt)")
    out: Path = arg(help="file to write: .pt2 (torch.export) or .onnx (ONNX); its description goes to the same "
                         "name with .json")

    def __post_init__(self) -> None:  # before the checkpoint is read: a wrong name fails in a second
        suffix = self.out.suffix.lower()
        if suffix not in FORMATS:
            old = " (TorchScript export is gone: torch.jit is deprecated)" if suffix in (".pt", ".pth", ".jit") else ""
            raise InferenceError(f"out={self.out}: name the file .pt2 (torch.export) or .onnx (ONNX){old}")
        missing = [name for name in ONNX_PACKAGES if find_spec(name) is None]
        if suffix == ".onnx" and missing:
            raise InferenceError(f"out={self.out}: ONNX export needs {', '.join(missing)}: "
                                 "pip install \"ssl_dr[onnx]\" (or name the file .pt2 for torch.export)")


def grader_network(model: nn.Module) -> nn.Module:
    """Backbone + head in eval mode on the CPU: what the exported file computes."""
    return nn.Sequential(model.backbone, model.head).eval().cpu()


def export_program(net: nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """``torch.export`` of ``net`` with the batch dimension dynamic (traced at 2: a size of 1 would be
    specialised)."""
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(net, (example,), dynamic_shapes=({0: batch},))


def write_pt2(net: nn.Module, image_size: int, out: Path, info: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write the ``torch.export`` program with ``info`` inside; return the program as read back from ``out``."""
    torch.export.save(export_program(net, image_size), out, extra_files={EXTRA_FILE: info})
    return torch.export.load(out).module()


def write_onnx(net: nn.Module, image_size: int, out: Path, info: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write the ONNX model (from the same ``torch.export`` graph) with ``info`` as metadata; return a function
    that runs ``out`` with onnxruntime."""
    import onnxruntime

    program = export_program(net, image_size)
    with torch.no_grad():
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                         verbose=False)
    onnx_program.model.metadata_props[EXTRA_FILE] = info
    onnx_program.save(str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def check(net: nn.Module, exported: Callable[[torch.Tensor], torch.Tensor], image_size: int) -> None:
    """The exported program against the checkpoint's network, on a batch of a size it was not traced at."""
    batch = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = net(batch), exported(batch)
    if got.shape != expected.shape or not torch.allclose(expected, got, atol=TOLERANCE, rtol=TOLERANCE):
        diff = (expected - got).abs().max().item() if got.shape == expected.shape else float("nan")
        raise InferenceError(f"the exported model differs from the checkpoint (shape {tuple(got.shape)} vs "
                             f"{tuple(expected.shape)}, max |diff| {diff:.2e}); this backbone cannot be exported")


def description(spec: InferenceSpec, grading: GradeHead, ckpt: Path, out: Path,
                screening: Screening | None = None) -> dict[str, Any]:
    """Everything a user of the exported file needs to feed it and read its output (and, where the checkpoint
    stores them, the temperature and the referable operating point to apply to that output)."""
    size = spec.image_size
    return {
        "format": FORMATS[out.suffix.lower()],
        "model_file": out.name,
        "load": LOADERS[out.suffix.lower()],
        "input": {"name": INPUT_NAME, "shape": ["N", 3, size, size], "dtype": "float32", "layout": "NCHW",
                  "channels": "RGB",
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
            "reference": "ssl_dr.data.fundus_preprocess.preprocess(ssl_dr.data.decode.read_rgb(path), "
                         "image_size, ben_graham, mask)",
            "mask": spec.mask, "mask_margin": fp.MASK_MARGIN,
            "crop_to_fundus": True, "dark_threshold": fp.DARK_THRESHOLD, "min_bright_fraction": fp.MIN_BRIGHT_FRACTION,
            "ben_graham": spec.ben_graham, "ben_graham_sigma_fraction": fp.SIGMA_FRACTION,
            "ben_graham_radius_fraction": fp.RADIUS_FRACTION},
        "head": grading.name,
        "output": {"name": OUTPUT_NAME, "shape": ["N", grading.num_outputs], **grading.decoding(),
                   "tta": "none applied (average the views' probabilities, or the regression score, then decode)"},
        **screening_entries(screening, grading.name),
        "grades": dict(enumerate(GRADE_NAMES)),
        "backbone": spec.backbone,
        "checkpoint": str(ckpt.resolve()),
        "ssl_dr_version": _version(), "ssl_dr_commit": _commit(), "torch_version": torch.__version__,
    }


def screening_entries(screening: Screening | None, head: str) -> dict[str, Any]:
    """``calibration`` (a stored temperature) and ``referable`` (a stored operating point) for the JSON: what
    ``predict`` applies to the network's output, which the exported file leaves raw. Nothing where none is stored
    (the threshold is null where validation had one side only)."""
    if screening is None:
        return {}
    entries: dict[str, Any] = {}
    temperature = screening.temperature
    if temperature is not None:
        entries["calibration"] = {"temperature": temperature,
                                  "probabilities": "softmax(outputs / temperature) (instead of output.probabilities; "
                                                   "fitted on the validation slice, argmax grades unchanged)",
                                  "applied": RAW_NETWORK}
    if screening.referable_target is not None:
        logits = "outputs" if temperature is None else "outputs / temperature"
        entries["referable"] = {"score": REFERABLE_SCORES[head].format(logits=logits),
                                "threshold": screening.referable_threshold if screening.has_threshold else None,
                                "target": screening.referable_target,
                                "rule": "refer when score >= threshold (chosen on the validation slice to reach "
                                        "target; null: that slice had one side only, no operating point)",
                                "applied": RAW_NETWORK}
    return entries


def _version() -> str | None:
    try:
        return metadata.version("ssl_dr")
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The git commit of the ssl_dr source (``+dirty`` with uncommitted changes), from the same probe that
    writes a run's ``environment.json``, so an export and the run that trained it name the code alike;
    None when the source is not a git checkout (an installed wheel)."""
    code = loaded_code()
    if code["reason"] is not None:
        return None
    return f"{code['commit']}+dirty" if code["dirty"] else code["commit"]


WRITERS = {".pt2": write_pt2, ".onnx": write_onnx}


def export(args: ExportArgs) -> Path:
    """Write ``args.out`` (``.pt2`` or ``.onnx``) and its ``.json`` description; return the JSON's path."""
    spec, screening = read_checkpoint(args.ckpt)
    model = load_classifier(args.ckpt, spec)
    net = grader_network(model)
    info = json.dumps(description(spec, model.grading, args.ckpt, args.out, screening), indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    suffix = args.out.suffix.lower()
    try:
        check(net, WRITERS[suffix](net, spec.image_size, args.out, info), spec.image_size)
    except InferenceError:
        args.out.unlink(missing_ok=True)  # never leave a file that predicts something else
        raise
    json_path = side_file(args.out, ".json")
    json_path.write_text(info + "\n")
    route = "torch.export" if suffix == ".pt2" else "ONNX"
    print(f"[ssl_dr] {route} grader (N x 3 x {spec.image_size} x {spec.image_size} -> N x "
          f"{model.grading.num_outputs}, {model.grading.name} head) -> {args.out}; preprocessing and decoding: "
          f"{json_path}")
    return json_path


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(export, ExportArgs, "ssl_dr.export", argv)


if __name__ == "__main__":
    main()
