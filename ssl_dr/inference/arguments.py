"""``key=value`` arguments of the inference tools, parsed against a dataclass (typed defaults; unknown or
missing keys are errors naming the key), and ``run_cli``, which turns every ``InferenceError`` into one
``error: ...`` line (exit status 2)."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ssl_dr.data.records import DataError

if TYPE_CHECKING:

    pass



T = TypeVar("T")


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
