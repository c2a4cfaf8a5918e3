"""Put what the GPU machine lacks into one git-ignored folder that travels with the checkout: ``gpu_bundle/``.

The lent H200 is offline and receives only a copy of the checkout (64 MiB at most, git-ignored folders
included when named in ``carry``). Its Python 3.12 has torch, Lightning, timm, torchmetrics, scikit-learn,
pandas and OpenCV, but not Hydra, OmegaConf, albumentations and their small dependencies; and the data
folder /work/shared/data/eyepacs-dev does not travel. So, run here once (network needed for the wheels):

    python benchmarks/prepare_gpu_bundle.py                 # -> gpu_bundle/{wheels,eyepacs-dev,COMMIT}

- ``wheels/``: cp312 manylinux x86_64 wheels of the missing packages at the versions this machine tests
  with (``pip download --only-binary``), antlr4-python3-runtime built here as a wheel (it is an sdist only,
  and OmegaConf 2.3 pins 4.9.*), and ``requirements.txt`` naming the three that ``benchmarks/gpu_check.sh``
  asks pip for (the others follow as their dependencies);
- ``eyepacs-dev/``: ``labels.csv`` as it is and every image re-encoded at the training size (224 px JPEG,
  quality 90: 256 px originals of ~30 KB become ~15 KB, so 2,046 images fit beside the wheels);
- ``COMMIT``: the commit and whether the tree was dirty (the GPU machine may get no ``.git``).

It fails, naming the figure, when the checkout with the bundle would exceed ``--limit-mib``. ``--generate N``
writes N generated fundus images instead of eyepacs-dev (the dry run uses it; ``--no-wheels`` skips pip).
The eyepacs-dev images stay under the Kaggle competition's terms: never commit the bundle.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EYEPACS_DEV = Path("/work/shared/data/eyepacs-dev")
BINARY = ("hydra-core", "omegaconf", "albumentations", "albucore", "pydantic", "pydantic-core", "simsimd",
          "stringzilla", "typing-inspection", "annotated-types", "typing-extensions")
"""Missing on the GPU machine (typing-extensions too: pydantic 2.13 needs >= 4.14.1, the machine may be older)."""
SDIST_ONLY = ("antlr4-python3-runtime",)
REQUIRED = ("hydra-core", "omegaconf", "albumentations")
"""What the GPU machine's pip is asked for: the rest come as their dependencies, from the bundle only where the
machine has no suitable version (so its own typing-extensions, numpy or OpenCV are never replaced)."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
PYTHON = "3.12"
DEVICE_LIMIT_MIB = 64


def pinned(names: tuple[str, ...]) -> list[str]:
    """``name==version`` as installed here: the GPU machine runs what the tests here ran."""
    return [f"{name}=={metadata.version(name)}" for name in names]


def wheel_commands(dest: Path) -> list[list[str]]:
    """pip commands that fill ``dest``: binary wheels for Python 3.12 on manylinux x86_64, and wheels built
    here from the sdist-only packages (pure Python, so a wheel built on any Python 3 installs on 3.12)."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pip = [sys.executable, "-m", "pip"]
    return [[*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON, "--implementation",
             "cp", *platforms, "-d", str(dest), *pinned(BINARY)],
            [*pip, "wheel", "--no-deps", "-w", str(dest), *pinned(SDIST_ONLY)]]


def fetch_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for command in wheel_commands(dest):
        subprocess.run(command, check=True)
    (dest / "requirements.txt").write_text("\n".join(pinned(REQUIRED)) + "\n")


def reencode(source: Path, dest: Path, size: int, quality: int) -> int:
    """``source`` (``labels.csv`` + ``images/<id_code>.<ext>``) -> ``dest`` with ``size`` px JPEGs."""
    with (source / "labels.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or "id_code" not in rows[0]:
        raise SystemExit(f"{source / 'labels.csv'}: no id_code column (eyepacs-dev layout: labels.csv + images/)")
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        found = [p for p in (source / "images").glob(f"{row['id_code']}.*") if p.suffix.lower() != ".json"]
        if not found:
            raise SystemExit(f"{source / 'images'}: no image for id_code {row['id_code']} listed in labels.csv")
        image = cv2.imread(str(found[0]), cv2.IMREAD_COLOR)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(dest / "images" / f"{row['id_code']}.jpeg"), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    shutil.copyfile(source / "labels.csv", dest / "labels.csv")
    readme = source / "README.md"
    note = readme.read_text() if readme.is_file() else ""
    (dest / "README.md").write_text(f"Re-encoded from {source} at {size} px, JPEG quality {quality}, by "
                                    f"benchmarks/prepare_gpu_bundle.py. Do not commit.\n\n{note}")
    return len(rows)


def write_images(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` generated fundus photographs in eyepacs-dev's layout (``labels.csv`` = id_code, diagnosis,
    patient_id, eye; ``images/<id>.png``), both eyes of each patient, every grade present from 20 on."""
    from ssl_dr.data.synthetic import GRADE_MIX, assign_grades, render_fundus

    rng = np.random.default_rng(seed)
    grades = assign_grades(n, GRADE_MIX, rng)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id_code", "diagnosis", "patient_id", "eye"])
        for i, grade in enumerate(grades):
            patient, eye = 1000 + i // 2, ("left", "right")[i % 2]
            image = render_fundus(rng, int(grade), size, eye)
            cv2.imwrite(str(root / "images" / f"{patient}_{eye}.png"), image[:, :, ::-1])
            writer.writerow([f"{patient}_{eye}", int(grade), patient, eye])
    return root


def mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def checkout_mib() -> float:
    """What travels besides the bundle: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file()) / 2**20


def commit_note() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--short", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return f"{head or 'unknown'}{' (+ uncommitted changes)' if dirty else ''}\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_bundle", help="bundle folder (git-ignored)")
    parser.add_argument("--images", type=Path, default=EYEPACS_DEV, help="eyepacs-dev layout: labels.csv + images/")
    parser.add_argument("--generate", type=int, metavar="N", help="N generated images instead of --images")
    parser.add_argument("--size", type=int, default=224, help="image size in px (the training size)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--no-wheels", action="store_true", help="images only (no pip, no network)")
    parser.add_argument("--limit-mib", type=float, default=DEVICE_LIMIT_MIB - 4,
                        help="most MiB of checkout + bundle (the device takes 64; 4 kept for the tree's growth)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    if not args.no_wheels:
        fetch_wheels(args.out / "wheels")
    with tempfile.TemporaryDirectory(prefix="bundle-images-") as tmp:
        source = args.images
        if args.generate:
            source = write_images(Path(tmp), args.generate, args.size)
        count = reencode(source, args.out / "eyepacs-dev", args.size, args.quality)
    (args.out / "COMMIT").write_text(commit_note())
    parts = {"wheels": args.out / "wheels", "images": args.out / "eyepacs-dev"}
    sizes = {name: mib(path) if path.exists() else 0.0 for name, path in parts.items()}
    tree = checkout_mib()
    total = tree + mib(args.out)
    print(f"bundle {args.out}: wheels {sizes['wheels']:.1f} MiB, {count} images at {args.size} px "
          f"{sizes['images']:.1f} MiB; checkout {tree:.1f} MiB; travels {total:.1f} MiB of {DEVICE_LIMIT_MIB}")
    if total > args.limit_mib:
        print(f"error: checkout + bundle is {total:.1f} MiB, over --limit-mib {args.limit_mib:g}: lower --quality "
              "or --size", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
