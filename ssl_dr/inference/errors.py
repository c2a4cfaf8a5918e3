"""The inference commands' one error type, in a module of its own: checkpoint, image, TTA and Grad-CAM code raise
it without importing the argument parser, and ``run_cli`` prints it as ``error: <message>`` (exit status 2)."""

from __future__ import annotations

from ssl_dr.errors import UserError


class InferenceError(UserError, ValueError):
    """A bad argument, checkpoint or input set: shown as ``error: <message>`` without a traceback."""
