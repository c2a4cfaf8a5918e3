"""Deterministic synthetic fundus photographs: the project's built-in diabetic-retinopathy dataset.

Why it exists: the whole pipeline (rotation pre-training, few-label grading) must run and be tested
without the Kaggle APTOS 2019 download, so this package writes a folder in the APTOS layout
(``train.csv`` = ``id_code,diagnosis``, ``train_images/``, optional ``test.csv`` + ``test_images/``)
that the real-data reader consumes unchanged.

Why it looks the way it does: a CNN trained on it should learn for the right reasons.

* Orientation comes only from anatomy: the optic disc sits on the nasal side, the darker macula about
  2.5 disc diameters temporal to it and slightly lower, and the vessel arcades arch around the macula.
  Left and right eyes are mirrored. The field of view is a centred circle, so the border says nothing
  about rotation.
* Grades follow the international DR scale (0 none, 1 microaneurysms only, 2 moderate, 3 severe with
  haemorrhages in four quadrants / venous beading / cotton-wool spots, 4 proliferative). Lesion counts
  overlap between neighbouring grades and colour, illumination, blur and noise vary per image, so
  grading stays hard. All sizes scale with the image so lesions remain visible at 64-128 px.
* Each image gets its own random stream derived from ``(seed, split, index)``, so datasets are
  byte-identical for identical parameters whatever the generation order.

Command line: ``python -m ssl_dr.data.synthetic --root DIR [--num-labelled N ...]``.

The code runs one way, each module importing only from those before it: ``anatomy`` (the healthy eye:
field of view, disc, macula, vessel tree) -> ``lesions`` (grade lesions and grade-independent artefacts as
masks) -> ``rendering`` (compositing, camera, montage) -> ``writer`` (the dataset folder and the CLI).
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
