"""Every error a user can cause shares one base class, which the commands turn into one ``error: ...`` line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import ssl_dr
from ssl_dr.errors import ConfigError, DataError, UserError
from ssl_dr.train import _user_error


def _project_errors() -> list[type[BaseException]]:
    """Public exception classes defined in the layers' packages (the commands define none)."""
    found = set()
    for info in pkgutil.walk_packages(ssl_dr.__path__, "ssl_dr."):
        if (info.name.count(".") < 2 and not info.ispkg) or info.name.endswith("__main__"):
            continue  # a command (python -m ...): importing it runs it
        module = importlib.import_module(info.name)
        found |= {obj for _, obj in inspect.getmembers(module, inspect.isclass) if issubclass(obj, Exception)
                  and obj.__module__.startswith("ssl_dr") and not obj.__name__.startswith("_")}
    return sorted(found, key=lambda cls: cls.__qualname__)


@pytest.mark.parametrize("error", _project_errors(), ids=lambda cls: cls.__name__)
def test_every_project_error_is_a_user_error(error):
    assert issubclass(error, UserError)


def test_settings_and_data_errors_are_told_apart():
    assert not issubclass(ConfigError, DataError) and not issubclass(DataError, ConfigError)


def test_train_finds_a_user_error_behind_hydras_wrapper():
    from hydra.errors import InstantiationException

    cause = ConfigError("pretext.module.temperature=0 must be positive")
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = cause
    assert _user_error(wrapped) is cause
    assert _user_error(RuntimeError("a bug")) is None
