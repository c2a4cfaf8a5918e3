"""Loader throughput: training images from the preprocessed cache versus from the original files.

A GPU step on a 224 px DenseNet batch is fast; the data loader must keep up with it, one worker per
CPU core. This measures images/s PER WORKER of the real training pipeline (read + ``finetune``
augmentation) both ways in the same run, plus what the one-off cache build costs, so the numbers
can be compared and a worker count chosen. Both sources are warm in the page cache (the build has
just read every file), so the ratio is a lower bound for files on a network or spinning disk.

    python benchmarks/loader.py --images /work/shared/data/eyepacs-dev --n 2046
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import albumentations
import cv2
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_dr.data.cache import ImageCache, build_cache
from ssl_dr.data.csv_source import CsvSource
from ssl_dr.data.datasets import read_rgb
from ssl_dr.data.fundus_preprocess import preprocess
from ssl_dr.data.listing import IMAGE_EXTENSIONS
from ssl_dr.data.records import Record
from ssl_dr.data.transforms import AugmentConfig, build_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EYEPACS_DEV = Path("/work/shared/data/eyepacs-dev")


def find_records(root: Path) -> list[Record]:
    """eyepacs-dev layout (``labels.csv`` + ``images/<id>.jpeg``) or, for any folder, all its image files."""
    if (root / "labels.csv").is_file() and (root / "images").is_dir():
        return CsvSource(root, csv="labels.csv", image_dir="images", group_column="patient_id").load()
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return [Record(str(p.relative_to(root).with_suffix("")).replace("/", "_"), p, None) for p in paths]


class Source(Dataset):
    """The training-time read of one image, from the cache or from its file, then augmented."""

    def __init__(self, records: Sequence[Record], read: Callable[[Record], object], transform: Callable) -> None:
        self.records, self.read, self.transform = list(records), read, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(image=self.read(self.records[index]))["image"]


class FromCache:
    def __init__(self, cache: ImageCache) -> None:
        self.cache = cache

    def __call__(self, rec: Record):
        return self.cache.image(rec.id_code)


class FromFile:
    def __init__(self, size: int, ben_graham: bool) -> None:
        self.size, self.ben_graham = size, ben_graham

    def __call__(self, rec: Record):
        return preprocess(read_rgb(rec.path), self.size, self.ben_graham)


def loop_rate(dataset: Source) -> float:
    """Images/s of one process reading the dataset in order (what one DataLoader worker does)."""
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return len(dataset) / (time.perf_counter() - start)


def loader_rate(dataset: Source, workers: int) -> float:
    """Images/s of a DataLoader with ``workers`` persistent processes (batches of 32), second epoch.

    The first epoch only warms up: it pays for starting the workers, which training pays once.
    """
    loader = DataLoader(dataset, batch_size=32, num_workers=workers, persistent_workers=True)
    for _ in loader:
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(dataset) / (time.perf_counter() - start)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=EYEPACS_DEV, help="eyepacs-dev root or any image folder")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=512, help="images read per throughput measurement")
    parser.add_argument("--workers", type=int, default=1, help="also time a DataLoader with this many workers")
    parser.add_argument("--build-workers", type=int, default=os.cpu_count(), help="cache build processes")
    parser.add_argument("--ben-graham", action="store_true", help="Ben Graham normalisation in the cache")
    parser.add_argument("--cache-root", type=Path, help="keep the cache here (default: a temp folder)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    records = find_records(args.images)
    if not records:
        sys.exit(f"no images found in {args.images}")
    sample = sorted(records, key=lambda r: r.id_code)[:args.n]
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}, torch {torch.__version__}, albumentations {albumentations.__version__}, "
          f"opencv {cv2.__version__}")
    print(f"settings: {args.images} ({len(records)} images), size {args.size}, ben_graham {args.ben_graham}, "
          f"n {len(sample)}, build workers {args.build_workers}, augment finetune (ImageNet mean/std, seed 0)")
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        cache_root = args.cache_root or Path(tmp)
        start = time.perf_counter()
        cache = build_cache(records, cache_root, args.size, args.ben_graham, args.build_workers)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        build_cache(records, cache_root, args.size, args.ben_graham)
        reopen_s = time.perf_counter() - start
        megabytes = (cache.path / "images.npy").stat().st_size / 2**20
        print(f"cache build: {len(cache)} images in {build_s:.1f} s ({len(cache) / build_s:.0f} img/s with "
              f"{args.build_workers} workers), {megabytes:.0f} MiB; reopening it: {reopen_s * 1e3:.0f} ms")
        measure(sample, cache, args)


def measure(sample: list[Record], cache: ImageCache, args: argparse.Namespace) -> None:
    def make(read: Callable) -> Source:
        return Source(sample, read, build_transform("finetune", args.size, IMAGENET_MEAN, IMAGENET_STD,
                                                    AugmentConfig(), seed=0))

    cached, original = make(FromCache(cache)), make(FromFile(args.size, args.ben_graham))
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)  # one worker = one core: no hidden intra-op threads in the per-worker figure
    cv2.setNumThreads(1)
    loop_rate(make(FromCache(cache)))  # warm-up: imports, first-call allocations
    rates = {"cache": loop_rate(cached), "original": loop_rate(original)}
    torch.set_num_threads(threads[0])
    cv2.setNumThreads(threads[1])
    print(f"per worker (1 process, 1 thread; read + augment at {args.size} px, {len(sample)} images):")
    for name, rate in rates.items():
        print(f"  {name:<9} {rate:8.0f} img/s  {1e3 / rate:6.2f} ms/img")
    print(f"  ratio cache / original: {rates['cache'] / rates['original']:.2f}x")
    if args.workers > 1:
        print(f"DataLoader, {args.workers} workers, batch 32, warm epoch (library default threads):")
        for name, dataset in (("cache", cached), ("original", original)):
            rate = loader_rate(dataset, args.workers)
            print(f"  {name:<9} {rate:8.0f} img/s total  {rate / args.workers:8.0f} img/s per worker")


if __name__ == "__main__":
    main()
