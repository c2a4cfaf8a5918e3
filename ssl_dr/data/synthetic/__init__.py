"""Deterministic synthetic fundus photographs: the project's built-in diabetic-retinopathy dataset.

It lets the whole pipeline run and be tested without the Kaggle APTOS download: it writes a folder in the APTOS
layout (``train.csv`` = ``id_code,diagnosis``, ``train_images/``, optional ``test.csv`` + ``test_images/``) that
the real-data reader consumes unchanged. A CNN trained on it should learn for the right reasons: orientation comes
only from anatomy (disc nasal, macula temporal, eyes mirrored, a centred circular field of view), grades follow the
international DR scale with lesion counts overlapping between neighbours, and sizes scale with the image so lesions
stay visible at 64-128 px. Each image draws from its own stream ``(seed, split, index)``, so a dataset is
byte-identical whatever the generation order. CLI: ``python -m ssl_dr.data.synthetic --root DIR [...]``.
The modules import one way: ``anatomy`` -> ``lesions`` -> ``rendering`` -> ``writer`` (the folder and the CLI).
"""

from ssl_dr.data.records import GRADE_NAMES, NUM_GRADES
from ssl_dr.data.synthetic.anatomy import EYES
from ssl_dr.data.synthetic.rendering import render_fundus, render_montage
from ssl_dr.data.synthetic.writer import GENERATOR_VERSION, GRADE_MIX, assign_grades, main, write_synthetic_dataset

__all__ = [
    "EYES",
    "GENERATOR_VERSION",
    "GRADE_MIX",
    "GRADE_NAMES",
    "NUM_GRADES",
    "assign_grades",
    "main",
    "render_fundus",
    "render_montage",
    "write_synthetic_dataset",
]
