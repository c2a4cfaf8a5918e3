"""``ssl_dr.inference.arguments``: the commands' ``key=value`` arguments, typed, with one error per mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ssl_dr.inference import InferenceError, InputArgs, parse_args
from ssl_dr.predict import PredictArgs


def test_parse_args_types_defaults_and_errors(tmp_path):
    args = parse_args(PredictArgs, ["ckpt=a.ckpt", "images=imgs", "out=o.csv", "probs=true", "batch_size=4",
                                    "num_workers=null", "tta=flip"])
    assert args == PredictArgs(ckpt=Path("a.ckpt"), images=Path("imgs"), out=Path("o.csv"), probs=True,
                               batch_size=4, num_workers=None, tta="flip")
    assert parse_args(InputArgs, ["ckpt=a", "images=b"]).device == "auto"
    for argv, message in [(["ckpt=a", "images=b", "tyop=1"], "unknown argument 'tyop'"),
                          (["images=b", "out=c"], "missing required argument(s): ckpt="),
                          (["ckpt=a", "images=b", "out=c", "tta=rot8"], "tta='rot8' must be one of"),
                          (["ckpt=a", "images=b", "out=c", "batch_size=many"], "batch_size='many' must be"),
                          (["ckpt=a", "images=b", "out=c", "probs=maybe"], "probs='maybe' must be true or false"),
                          (["ckpt=a", "ckpt=b", "images=b", "out=c"], "'ckpt' given twice"),
                          (["ckpt", "images=b", "out=c"], "'ckpt' is not key=value"),
                          (["ckpt=a", "images=b", "out=c", "batch_size=0"], "batch_size=0 must be at least 1")]:
        with pytest.raises(InferenceError, match=re.escape(message)):
            parse_args(PredictArgs, argv)


def test_arguments_follow_the_training_grammar():
    """Hydra's override grammar as in training (null, quotes, no sweeps), OmegaConf's types; file names the
    grammar cannot read are taken verbatim for path keys."""
    args = parse_args(PredictArgs, ["ckpt=2024", "images='scans,2024'", "out=Ärzte/scan(1).csv",
                                    "image_dir=null", "batch_size=8"])
    assert args.ckpt == Path("2024") and args.images == Path("scans,2024") and args.batch_size == 8
    assert args.out == Path("Ärzte/scan(1).csv") and args.image_dir is None
    for argv, message in [(["images=b", "out=c", "ckpt=a,b"], "is a sweep; these tools take one value per key"),
                          (["images=b", "out=c", "ckpt=a", "+batch_size=4"], "plain key=value"),
                          (["images=b", "out=c", "ckpt=a", "batch_size=2.5"], "batch_size='2.5' must be of type int"),
                          (["images=b", "out=c", "ckpt=a", "num_workers=x"],
                           "num_workers='x' must be of type int (or null)"),
                          (["images=null", "out=c", "ckpt=a"], "images='null' must be of type Path")]:
        with pytest.raises(InferenceError, match=re.escape(message)):
            parse_args(PredictArgs, argv)
