"""Frozen-feature extraction speed: how many images per second a probe's one forward pass costs here.

The first ``--n`` images of a folder are preprocessed into an image cache (decode, crop, mask: timed apart, and
reused from ``--cache-dir`` when given), then ``ssl_dr.probes.features.extract_features`` runs the backbone
(random init: the weights do not change the cost) over them into a fresh feature store, and the classical
reference (``ssl_dr.probes.classical``) is timed likewise. Prints images/s with the torch threads and CPUs used.

    python benchmarks/features.py --images ../shared/data/idrid/images --n 200 --size 224
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ssl_dr.data.cache import build_cache
from ssl_dr.data.listing import IMAGE_EXTENSIONS
from ssl_dr.data.records import Record
from ssl_dr.models.backbone import Backbone
from ssl_dr.probes.classical import extract_classical
from ssl_dr.probes.features import extract_features


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of fundus photographs")
    parser.add_argument("--n", type=int, default=200, help="how many images (the first, by name)")
    parser.add_argument("--size", type=int, default=224, help="image size, px (cache and network input)")
    parser.add_argument("--model", default="densenet121", help="timm model name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep the image cache here (reused next time)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:args.n]
    if not paths:
        sys.exit(f"--images {args.images}: no image files found")
    if args.threads:
        torch.set_num_threads(args.threads)
    records = [Record(p.stem, p, None) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        image_root = args.cache_dir or Path(tmp) / "images"
        started = time.perf_counter()
        cache = build_cache(records, image_root, args.size, ben_graham=False)
        cached_s = time.perf_counter() - started
        torch.manual_seed(0)
        backbone = Backbone(args.model)
        started = time.perf_counter()
        deep = extract_features(backbone, cache, Path(tmp) / "deep", batch_size=args.batch)
        deep_s = time.perf_counter() - started
        started = time.perf_counter()
        classical = extract_classical(cache, Path(tmp) / "classical")
        classical_s = time.perf_counter() - started
    n = len(cache)
    print(f"{n} images from {args.images} at {args.size} px; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs (shared with whatever else runs)")
    print(f"image cache: {cached_s:.1f} s (decode + preprocess, or reused from --cache-dir)")
    print(f"features ({args.model}, {deep.features.shape[1]}-d, batch {args.batch}): {deep_s:.1f} s, "
          f"{n / deep_s:.1f} images/s")
    print(f"classical ({classical.features.shape[1]}-d): {classical_s:.1f} s, {n / classical_s:.1f} images/s")


if __name__ == "__main__":
    main()
