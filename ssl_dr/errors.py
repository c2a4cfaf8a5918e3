"""The errors a user can cause, under one base class the commands catch: each is printed as one line
``error: ...`` (exit status 2), never a traceback. The message names the setting or file and the fix."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a setting, a file, a dead rank 0, a diverged run."""


class ConfigError(UserError, ValueError):
    """A setting (config key or command-line argument) that cannot work, alone or with another."""


class DataError(UserError, ValueError):
    """The user's data: a missing, unreadable or inconsistent file or folder."""
