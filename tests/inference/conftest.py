"""The session's tiny real grader (``tests/tiny_grader.py``) for the tests of ``ssl_dr.inference`` that need one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tiny_grader import TinyRun, one_thread, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[TinyRun]:
    with one_thread():
        yield tiny_run(tmp_path_factory)
