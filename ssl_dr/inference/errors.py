"""The inference commands' one error type, in a module of its own: checkpoint, image, TTA and Grad-CAM code raise
it without importing the argument parser, and ``run_cli`` prints it as ``error: <message>`` (exit status 2)."""

from __future__ import annotations

from ssl_dr.errors import UserError


class InferenceError(UserError, ValueError):
    """A bad argument, checkpoint or input set: shown as ``error: <message>`` without a traceback."""


def first_line(err: BaseException) -> str:
    """A library error's first line (at most 300 characters), to quote inside one of ours."""
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__
