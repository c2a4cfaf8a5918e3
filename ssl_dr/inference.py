"""What ``predict``, ``explain`` and ``export`` share: arguments, checkpoint, images, batches, TTA.

Why one module: the three tools must see an image exactly as training did, and must fail the same way.
So the input pipeline is rebuilt from the checkpoint's ``inference`` hyper-parameters (backbone, size,
crop/mask/Ben Graham, mean/std: never re-typed) with the training code itself (``fundus_preprocess.preprocess``
then the ``eval`` transform of ``data.transforms``), and every user mistake ends as one ``InferenceError``
that ``run_cli`` prints as ``error: ...`` (exit status 2) without a traceback.

Arguments are Hydra-style ``key=value`` tokens parsed against a dataclass (typed defaults; unknown or
missing keys are errors naming the key) rather than a Hydra config tree: three small tools do not need
config groups, and their checkpoint already carries the settings that matter.

Every image is decoded and preprocessed before any prediction, into a temporary memory-mapped array (so
50k photographs at 512 px need disk, not RAM), which checks the whole input at once: unreadable files are
all named in one error, or, with ``skip_bad=true``, all listed in a side CSV and counted, never dropped
silently. Lightning, timm and albumentations are imported only once a checkpoint has passed its checks,
so a mistyped argument fails in about two seconds instead of ten.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import MISSING, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from ssl_dr.data.csv_source import IMAGE_EXTENSIONS, find_image
from ssl_dr.data.decode import decode_preprocessed
from ssl_dr.data.fundus_preprocess import MASKS
from ssl_dr.data.records import DataError, Record, duplicate_ids

if TYPE_CHECKING:
    import albumentations as A

    from ssl_dr.classifier import DRClassifier

T = TypeVar("T")
TTA_MODES = ("none", "flip", "rot4", "flip_rot4")
_TTA_VIEWS = {"none": (False, 1), "flip": (True, 1), "rot4": (False, 4), "flip_rot4": (True, 4)}
"""mode -> (also horizontally flipped, number of 90-degree rotations)"""
DECODE_CHUNK = 16
"""Images per decoding task: amortises inter-process traffic, keeps the progress bar smooth."""


class InferenceError(ValueError):
    """A bad argument, checkpoint or input set: shown as ``error: <message>`` without a traceback."""


# ----------------------------------------------------------------------------- key=value arguments

def arg(default: Any = MISSING, help: str = "", choices: Sequence[str] | None = None) -> Any:
    """A dataclass field for ``parse_args``: no ``default`` makes the key required."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": tuple(choices or ())})


@dataclass(kw_only=True)
class InputArgs:
    """Arguments every tool that reads images shares."""

    ckpt: Path = arg(help="DRClassifier checkpoint (a run's checkpoints/best.ckpt)")
    images: Path = arg(help="folder of images (png/jpg/jpeg/tif/tiff), or a CSV with an id_code column")
    image_dir: Path | None = arg(None, help="folder of the CSV's images (null: test_images next to the CSV, "
                                            "else the CSV's folder)")
    device: str = arg("auto", help="auto (a GPU when there is one) | cpu | cuda | cuda:N")
    batch_size: int = arg(32, help="images per forward pass")
    num_workers: int | None = arg(None, help="processes decoding images (null: all cores; 0: none)")
    skip_bad: bool = arg(False, help="skip unreadable images and list them in a side CSV instead of stopping")

    def __post_init__(self) -> None:  # checked before any work, not after minutes of decoding
        if self.batch_size < 1:
            raise InferenceError(f"batch_size={self.batch_size} must be at least 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise InferenceError(f"num_workers={self.num_workers} must be 0 or more (or null: all cores)")


def parse_args(cls: type[T], argv: Sequence[str]) -> T:
    """``key=value`` tokens -> ``cls`` instance, values converted to the fields' annotated types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for token in argv:
        key, sep, text = token.partition("=")
        if not sep or not key:
            raise InferenceError(f"argument {token!r} is not key=value (e.g. ckpt=checkpoints/best.ckpt)")
        if key not in fields:
            raise InferenceError(f"unknown argument {key!r}; known: {', '.join(fields)}")
        if key in values:
            raise InferenceError(f"argument {key!r} given twice")
        values[key] = _convert(key, text, hints[key], fields[key].metadata.get("choices", ()))
    missing = [name for name, f in fields.items() if name not in values and f.default is MISSING]
    if missing:
        raise InferenceError(f"missing required argument(s): {' '.join(f'{m}=...' for m in missing)}")
    return cls(**values)


def _convert(key: str, text: str, kind: Any, choices: Sequence[str]) -> Any:
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        if text.lower() in ("null", "none", ""):
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if choices and text not in choices:
        raise InferenceError(f"{key}={text!r} must be one of {', '.join(choices)}")
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise InferenceError(f"{key}={text!r} must be true or false")
        return text.lower() in ("true", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise InferenceError(f"{key}={text!r} must be of type {kind.__name__}") from None


def usage(cls: type, command: str) -> str:
    """Help text listing every key with its default and meaning."""
    lines = [f"usage: python -m {command} key=value ...", ""]
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        text = f.metadata.get("help", "") + (f": {'|'.join(choices)}" if choices else "")
        default = "required" if f.default is MISSING else f"default {_show(f.default)}"
        lines.append(f"  {f.name:<12} {text} ({default})")
    return "\n".join(lines)


def _show(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def run_cli(main: Callable[[T], object], cls: type[T], command: str, argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line) and run ``main``; user errors end in one line, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage(cls, command))
        return
    try:
        main(parse_args(cls, argv))
    except (InferenceError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------- checkpoint

@dataclass(frozen=True)
class InferenceSpec:
    """The input pipeline a checkpoint was trained with (its ``hyper_parameters.inference``)."""

    backbone: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ben_graham: bool
    mask: str = "none"  # data.preprocess.mask; checkpoints from before the mask existed trained unmasked

    @classmethod
    def from_hparams(cls, inference: dict[str, Any]) -> InferenceSpec:
        mask = str(inference["preprocess"].get("mask", "none"))
        if mask not in MASKS:
            raise ValueError(f"preprocess.mask={mask!r} is not one of {MASKS}")
        return cls(backbone=str(inference["backbone"]), image_size=int(inference["image_size"]),
                   mean=tuple(float(m) for m in inference["mean"]), std=tuple(float(s) for s in inference["std"]),
                   ben_graham=bool(inference["preprocess"]["ben_graham"]), mask=mask)


def read_spec(ckpt: Path) -> InferenceSpec:
    """Check that ``ckpt`` is a DRClassifier checkpoint and return its input pipeline (torch only, cheap)."""
    if not ckpt.is_file():
        raise InferenceError(f"checkpoint {ckpt} not found (ckpt= takes a run's checkpoints/best.ckpt)")
    try:
        payload = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for foreign or damaged files
        raise InferenceError(f"{ckpt} is not a readable PyTorch checkpoint ({type(err).__name__}: "
                             f"{_first_line(err)})") from None
    hparams = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    state = payload.get("state_dict", {}) if isinstance(payload, dict) else {}
    if not isinstance(hparams, dict) or "head.1.weight" not in state:
        raise InferenceError(f"{ckpt} is not a DRClassifier checkpoint (expected the grader's "
                             "checkpoints/best.ckpt written by python -m ssl_dr.train)")
    if not isinstance(hparams.get("inference"), dict):
        raise InferenceError(f"{ckpt} is a DRClassifier checkpoint without hyper_parameters.inference (written "
                             "before checkpoints carried their input pipeline): retrain it with this version")
    try:
        return InferenceSpec.from_hparams(hparams["inference"])
    except (KeyError, TypeError, ValueError) as err:
        raise InferenceError(f"{ckpt}: incomplete hyper_parameters.inference ({err!r})") from None


def load_classifier(ckpt: Path, spec: InferenceSpec) -> DRClassifier:
    """The checkpoint's DRClassifier on the CPU, in eval mode (weights loaded strictly)."""
    from ssl_dr.backbone import Backbone
    from ssl_dr.classifier import DRClassifier

    try:
        backbone = Backbone(spec.backbone)
    except RuntimeError as err:  # timm: unknown model name
        raise InferenceError(f"{ckpt}: backbone {spec.backbone!r} cannot be built ({_first_line(err)})") from None
    try:
        model = DRClassifier.load_from_checkpoint(ckpt, map_location="cpu", backbone=backbone, weights_only=True)
    except (RuntimeError, KeyError, TypeError) as err:
        raise InferenceError(f"{ckpt} does not fit a {spec.backbone} DRClassifier ({_first_line(err)})") from None
    return model.eval()


def resolve_device(name: str) -> torch.device:
    """``auto``: the first GPU when CUDA sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InferenceError(f"device={name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device={name} but no CUDA GPU is visible (use device=auto or device=cpu)")
    return device


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


# ----------------------------------------------------------------------------- images

def list_images(images: Path, image_dir: Path | None = None) -> list[Record]:
    """Unlabelled records: a folder's images sorted by name (id = file stem), or a CSV's ``id_code`` rows in
    order (ids verbatim, as a Kaggle submission must repeat them)."""
    if images.is_dir():
        if image_dir is not None:
            raise InferenceError("image_dir= only applies when images= is a CSV file")
        records = _folder_records(images)
    elif images.is_file() and images.suffix.lower() == ".csv":
        records = _csv_records(images, image_dir)
    elif images.exists():
        raise InferenceError(f"images={images} must be a folder of images or a .csv file with an id_code column")
    else:
        raise InferenceError(f"images={images} not found")
    _check_unique([r.id_code for r in records], images)
    return records


def _folder_records(folder: Path) -> list[Record]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise InferenceError(f"no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images in {folder}")
    return [Record(id_code=p.stem, path=p, grade=None) for p in files]


def _csv_records(csv_path: Path, image_dir: Path | None) -> list[Record]:
    if image_dir is None:
        image_dir = csv_path.parent / "test_images"
        image_dir = image_dir if image_dir.is_dir() else csv_path.parent
    elif not image_dir.is_dir():
        raise InferenceError(f"image_dir={image_dir} is not a folder")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InferenceError(f"{csv_path} is not a readable CSV ({_first_line(err)})") from None
    if "id_code" not in table.columns:
        raise InferenceError(f"{csv_path} has no id_code column (it has {list(table.columns)})")
    ids = [i.strip() for i in table["id_code"]]
    bad = [f"row {n}: {i!r}" for n, i in enumerate(ids, start=2) if not i or Path(i).name != i or i in (".", "..")]
    if bad:
        raise InferenceError(f"{csv_path}: id_code must be a plain file name, not {', '.join(bad)}")
    if not ids:
        raise InferenceError(f"{csv_path} lists no images")
    return [Record(id_code=i, path=_image_file(image_dir, i), grade=None) for i in ids]  # ids kept verbatim


def _image_file(folder: Path, id_code: str) -> Path:
    """The file of ``id_code``; the bare path when none exists, so decoding reports it as unreadable
    together with the other bad files."""
    return find_image(folder, id_code) or folder / id_code


def _check_unique(ids: list[str], where: Path) -> None:
    duplicates = duplicate_ids(ids)
    if duplicates:
        raise InferenceError(f"{where}: duplicate id(s) {duplicates[:10]} (one file per id: e.g. a.png and "
                             "a.jpg share the id 'a')")


@dataclass(frozen=True)
class Skipped:
    """An input image that could not be read, and why."""

    id_code: str
    path: Path
    error: str


@dataclass
class Decoded:
    """The readable images, preprocessed: ``pixels[i]`` (``(S, S, 3)`` uint8) belongs to ``records[i]``."""

    records: list[Record]
    pixels: np.ndarray
    skipped: list[Skipped]


def decode_one(path: Path, size: int, ben_graham: bool, mask: str = "none") -> np.ndarray | str:
    """The training pipeline's decoding and preprocessing of one file (the checkpoint's mask too), or why it
    cannot be read (the cache's own message: ``ssl_dr.data.decode``)."""
    try:
        return decode_preprocessed(path, size, ben_graham, mask)
    except DataError as err:
        return str(err)


@contextmanager
def decoded_images(records: Sequence[Record], spec: InferenceSpec, num_workers: int | None = None,
                   skipped_csv: Path | None = None) -> Iterator[Decoded]:
    """Decode every image before anything is predicted.

    Without ``skipped_csv``, any unreadable image stops everything with ONE error naming all of them.
    With it (``skip_bad=true``), they are written there (``id_code,path,error``; header only when none)
    and left out. The pixels live in a temporary memory map, deleted when the context ends.
    """
    size = spec.image_size
    with tempfile.TemporaryDirectory(prefix="ssl_dr-images-") as tmp:
        pixels = open_memmap(Path(tmp) / "images.npy", mode="w+", dtype=np.uint8,
                             shape=(len(records), size, size, 3))
        kept: list[Record] = []
        skipped: list[Skipped] = []
        decode = partial(decode_one, size=size, ben_graham=spec.ben_graham, mask=spec.mask)
        results = _parallel_map(decode, [r.path for r in records], num_workers)
        for rec, result in zip(records, tqdm(results, total=len(records), desc="reading", unit="img"), strict=True):
            if isinstance(result, str):
                skipped.append(Skipped(rec.id_code, rec.path, result))
            else:
                pixels[len(kept)] = result
                kept.append(rec)
        _report_skipped(skipped, len(records), skipped_csv)
        yield Decoded(kept, pixels[:len(kept)], skipped)


def _parallel_map(fn: Callable[[Path], Any], paths: list[Path], num_workers: int | None) -> Iterator[Any]:
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    if workers <= 1 or len(paths) < 4 * DECODE_CHUNK:  # a pool's start-up costs more than it saves
        yield from map(fn, paths)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, paths, chunksize=DECODE_CHUNK)


def _report_skipped(skipped: list[Skipped], total: int, skipped_csv: Path | None) -> None:
    if skipped and skipped_csv is None:
        listing = "\n  ".join(s.error for s in skipped)
        raise InferenceError(f"{len(skipped)} of {total} image(s) cannot be read, nothing was predicted:\n  "
                             f"{listing}\nreplace or remove them, or pass skip_bad=true to go on without them")
    if skipped_csv is not None:
        skipped_csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([dataclasses.asdict(s) for s in skipped], columns=["id_code", "path", "error"]).to_csv(
            skipped_csv, index=False)
        if len(skipped) == total:
            raise InferenceError(f"none of the {total} image(s) can be read (listed in {skipped_csv})")


def side_file(out: Path, suffix: str) -> Path:
    """``preds.csv`` -> ``preds<suffix>`` in the same folder (e.g. ``preds.skipped.csv``)."""
    return out.with_name(out.stem + suffix) if out.suffix else out.with_name(out.name + suffix)


# ----------------------------------------------------------------------------- tensors and TTA

def eval_transform(spec: InferenceSpec) -> A.Compose:
    """The training pipeline's ``eval`` transform (Resize to S, a no-op here; Normalize; to tensor)."""
    from ssl_dr.data.transforms import AugmentConfig, build_transform

    return build_transform("eval", spec.image_size, spec.mean, spec.std, AugmentConfig(), seed=0)


def tensor_batches(decoded: Decoded, transform: A.Compose, batch_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, images)`` batches in input order: ``images`` is ``(B, 3, S, S)`` float, normalised."""
    for start in range(0, len(decoded.records), batch_size):
        rows = slice(start, min(start + batch_size, len(decoded.records)))
        yield rows, torch.stack([transform(image=np.asarray(p))["image"] for p in decoded.pixels[rows]])


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views averaged by ``mode``: identity, + horizontal flip, and/or the four 90-degree rotations.

    Flips and rotations commute with the per-channel normalisation, so they act on the normalised tensor.
    """
    if mode not in _TTA_VIEWS:
        raise InferenceError(f"tta={mode!r} must be one of {', '.join(TTA_MODES)}")
    flip, rotations = _TTA_VIEWS[mode]
    bases = [images, images.flip(-1)] if flip else [images]
    return [torch.rot90(base, k, dims=(-2, -1)) for base in bases for k in range(rotations)]


@torch.inference_mode()
def predict_activated(model: DRClassifier, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The head's activation averaged over the TTA views, decoded afterwards (``model.grading``): grade
    probabilities ``(B, 5)`` for classification, threshold sigmoids ``(B, 4)`` for ordinal, the score
    ``(B,)`` for regression. Averaging probabilities (not logits or grades) keeps the decoding rule of a
    single pass; averaging the score lets the tuned thresholds cut the mean."""
    views = tta_views(images, tta)
    return torch.stack([model.grading.activate(model(v)) for v in views]).mean(dim=0)
