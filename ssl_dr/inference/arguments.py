"""``key=value`` arguments of the inference tools, parsed with Hydra's override grammar into an OmegaConf
structured config built from a dataclass (typed defaults; unknown, missing or mistyped keys are errors naming the
key), and ``run_cli``, which turns every user error (``ssl_dr.errors.UserError``) into one ``error: ...`` line
(exit status 2).

Same grammar as ``python -m ssl_dr.train``: ``null``, ``true``, quoting (``images='my scans,2024'``). One
leniency: a file name the grammar cannot read (``scan(1).png``, ``Ärzte/``) is taken verbatim for a path or
text key, because photographs arrive with such names and quoting every one of them helps nobody.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from ssl_dr.errors import UserError
from ssl_dr.inference.errors import InferenceError

T = TypeVar("T")



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
    """``key=value`` tokens -> ``cls`` instance, through ``OmegaConf.structured(cls)`` (types checked and
    converted by OmegaConf, ``__post_init__`` checks run by ``OmegaConf.to_object``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    parser = OverridesParser.create()
    for token in argv:
        key, sep, text = token.partition("=")
        if not sep or not key:
            raise InferenceError(f"argument {token!r} is not key=value (e.g. ckpt=checkpoints/best.ckpt)")
        if key[:1] in "+~" or "@" in key:
            raise InferenceError(f"argument {token!r}: these tools take plain key=value (no +, ~ or @package)")
        if key not in fields:
            raise InferenceError(f"unknown argument {key!r}; known: {', '.join(fields)}")
        if key in values:
            raise InferenceError(f"argument {key!r} given twice")
        values[key], texts[key] = _value(parser, token, key, text, _plain_type(hints[key])), text
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), values)  # keys were checked above
    except ValidationError as err:
        key = str(err.key)
        raise InferenceError(f"{key}={texts.get(key, '')!r} must be {_expected(hints[key])}") from None
    missing = sorted(OmegaConf.missing_keys(merged), key=list(fields).index)
    if missing:
        raise InferenceError(f"missing required argument(s): {' '.join(f'{m}=...' for m in missing)}")
    for key, value in values.items():
        choices = fields[key].metadata.get("choices", ())
        if choices and value not in choices:
            raise InferenceError(f"{key}={texts[key]!r} must be one of {', '.join(choices)}")
    return typing.cast(T, OmegaConf.to_object(merged))


def _value(parser: OverridesParser, token: str, key: str, text: str, kind: Any) -> Any:
    """One value in the override grammar; path and text keys keep what the user typed (``out=2024`` is a file
    called 2024, not the number) and accept names the grammar cannot read."""
    textual = kind in (str, Path)
    try:
        (override,) = parser.parse_overrides([token])
    except OverrideParseException as err:
        if textual:
            return text
        raise InferenceError(f"argument {token!r} cannot be read: {str(err).splitlines()[0]}") from None
    if override.is_sweep_override():
        raise InferenceError(f"argument {token!r} is a sweep; these tools take one value per key (quote a value "
                             f"that contains commas: {key}='{text}')")
    value = override.value()
    return text if textual and value is not None and not isinstance(value, str) else value


def _plain_type(kind: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(k for k in typing.get_args(kind) if k is not type(None))
    return kind


def _expected(kind: Any) -> str:
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    plain = _plain_type(kind)
    what = "true or false" if plain is bool else f"of type {getattr(plain, '__name__', plain)}"
    return what + (" (or null)" if optional else "")


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
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------- checkpoint
