"""What ``predict``, ``explain`` and ``export`` share: arguments, checkpoint, images, batches, TTA.

Modules: ``arguments`` (key=value parsing, ``run_cli``), ``checkpoint`` (spec and grader), ``images``
(listing and decoding the inputs), ``tta`` (batches and test-time augmentation).

One package, because the three tools must see an image exactly as training did and fail the same way: the input
pipeline is rebuilt from the checkpoint's ``inference`` hyper-parameters with the training code itself, and every
user mistake ends as one ``InferenceError`` that ``run_cli`` prints as ``error: ...`` (exit 2). All images are
decoded before any prediction (into a memory-mapped array: disk, not RAM), so unreadable files are named together
or, with ``skip_bad=true``, listed. Lightning, timm and albumentations are imported only once a checkpoint has
passed its checks, so a mistyped argument fails in seconds. Arguments, errors and the reasons: docs/inference.md.
"""

from __future__ import annotations

from ssl_dr.inference.arguments import InputArgs, arg, parse_args, run_cli, usage
from ssl_dr.inference.checkpoint import InferenceSpec, load_classifier, read_spec, resolve_device
from ssl_dr.inference.errors import InferenceError
from ssl_dr.inference.images import DECODE_CHUNK, Decoded, Skipped, decode_one, decoded_images, list_images, side_file
from ssl_dr.inference.tta import TTA_MODES, eval_transform, predict_activated, tensor_batches, tta_views

__all__ = [
    "DECODE_CHUNK", "Decoded", "InferenceError", "InferenceSpec", "InputArgs", "Skipped", "TTA_MODES", "arg",
    "decode_one", "decoded_images", "eval_transform", "list_images", "load_classifier", "parse_args",
    "predict_activated", "read_spec", "resolve_device", "run_cli", "side_file", "tensor_batches", "tta_views",
    "usage"
]
