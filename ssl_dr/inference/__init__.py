"""What ``predict``, ``explain`` and ``export`` share: arguments, checkpoint, images, batches, TTA.

Modules: ``arguments`` (key=value parsing, ``run_cli``), ``checkpoint`` (spec and grader), ``images``
(listing and decoding the inputs), ``tta`` (batches and test-time augmentation).

Why one module: the three tools must see an image exactly as training did, and must fail the same way.
So the input pipeline is rebuilt from the checkpoint's ``inference`` hyper-parameters (backbone, size,
crop/mask/Ben Graham, mean/std: never re-typed) with the training code itself (``fundus_preprocess.preprocess``
then the ``eval`` transform of ``data.transforms``), and every user mistake ends as one ``InferenceError``
that ``run_cli`` prints as ``error: ...`` (exit status 2) without a traceback.

Arguments are ``key=value`` tokens in Hydra's override grammar, checked by an OmegaConf structured config
built from each tool's dataclass (typed defaults; unknown, missing or mistyped keys are errors naming the key),
rather than a Hydra config tree: three small tools do not need config groups, and their checkpoint already
carries the settings that matter.

Every image is decoded and preprocessed before any prediction, into a temporary memory-mapped array (so
50k photographs at 512 px need disk, not RAM), which checks the whole input at once: unreadable files are
all named in one error, or, with ``skip_bad=true``, all listed in a side CSV and counted, never dropped
silently. Lightning, timm and albumentations are imported only once a checkpoint has passed its checks,
so a mistyped argument fails in about two seconds instead of ten.
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
