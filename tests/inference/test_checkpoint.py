"""``ssl_dr.inference.checkpoint``: the screening settings a checkpoint stores, read back."""

from __future__ import annotations

import re

import pytest

from ssl_dr.inference import InferenceError
from ssl_dr.inference.checkpoint import Screening, read_checkpoint
from tests.tiny_grader import screening_payload, with_screening


def test_read_checkpoint_returns_the_stored_screening_settings(run, tmp_path):
    ckpt = with_screening(run.ckpt, tmp_path / "s.ckpt", screening_payload(1.25, 0.375, {"sensitivity": 0.9}))
    spec, screening = read_checkpoint(ckpt)
    assert spec == run.spec and screening == Screening(1.25, 0.375, {"sensitivity": 0.9}) and screening.has_threshold
    assert not read_checkpoint(with_screening(run.ckpt, tmp_path / "n.ckpt", screening_payload()))[1].has_threshold
    broken = with_screening(run.ckpt, tmp_path / "broken.ckpt", {"temperature": "warm"})
    with pytest.raises(InferenceError, match=re.escape(f"{broken}: unreadable 'screening' entry")):
        read_checkpoint(broken)
