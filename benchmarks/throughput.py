"""Training throughput: the model alone (fp32 eager / bf16 + channels_last / + compile) and end to end.

DESIGN promises, on one H200 at 224 px: bf16 + channels_last >= 3x fp32 eager, >= 5,000 images/s with
compile, end to end (real loader + augmentation) >= 0.9x the model alone, and the paper's whole protocol
at APTOS size in <= 20 minutes. This measures all of it in ONE process on the same device, so ratios
compare like with like:

- model only: plain PyTorch training steps (forward, 5-class cross-entropy, backward, AdamW) of the
  project's ``Backbone`` + a linear head on random tensors already on the device, in three modes, plus the
  mode the trainer config uses at the pretext's batch (4 rotations per image);
- end to end: the real ``FundusDataModule`` over an image cache built from the given images (or generated
  ones), the fine-tune and the pretext augmentation, the real Lightning modules (``DRClassifier``,
  ``RotationPretext``) and the composed trainer config (``trainer=gpu``, or ``trainer=cpu`` with ``--cpu``)
  with its scale callback; ``data.num_workers`` as configured (``auto``) unless ``--workers``;
- the loader alone (same DataLoader, batches copied to the device), to tell a slow loader from a slow model;
- the projection of the paper's protocol at APTOS size from the end-to-end rates.

Warm-up steps (cuDNN autotuning, compilation, worker start) are timed separately and excluded; the GPU is
synchronised before every clock read; peak GPU memory is reset for every model-only mode. The compiled mode
runs last (its compile can take minutes), so a run stopped early still has the end-to-end figures.

    python benchmarks/throughput.py --images /data/eyepacs-dev    # GPU: densenet121, 224 px, batch 32
    python benchmarks/throughput.py --cpu                          # CPU smoke run on tiny sizes
"""

from __future__ import annotations

import argparse
import gc
import logging
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from ssl_dr.models.backbone import Backbone

NUM_CLASSES = 5
ROTATIONS = 4
GPU_DEFAULTS = {"size": 224, "batch": 32, "warmup": 5, "steps": 20, "e2e_warmup": 10, "e2e_steps": 100, "n": 512}
CPU_DEFAULTS = {"size": 64, "batch": 8, "warmup": 1, "steps": 3, "e2e_warmup": 1, "e2e_steps": 3, "n": 24}
# the paper's protocol at APTOS size (conf/experiment/paper.yaml, docs/protocol.md)
APTOS_POOL, APTOS_LABELLED, PRETEXT_EPOCHS = 5_590, 3_662, 200
FINETUNE_RUNS, FINETUNE_STEPS, FINETUNE_BATCH, VAL_CHECKS = 50, 1_740, 32, 20
FRACTIONS, FOLDS, VAL_SHARE = (0.05, 0.1, 0.25, 0.5, 1.0), 5, 0.2


@dataclass(frozen=True)
class Mode:
    name: str
    bf16: bool
    channels_last: bool
    compile: bool


MODES = (Mode("fp32 eager", bf16=False, channels_last=False, compile=False),
         Mode("bf16 + channels_last", bf16=True, channels_last=True, compile=False),
         Mode("bf16 + channels_last + compile", bf16=True, channels_last=True, compile=True))


@dataclass
class Result:
    mode: Mode
    images_per_s: float = float("nan")
    step_ms: float = float("nan")
    warmup_s: float = float("nan")
    peak_mib: float | None = None
    note: str = ""
    batch: int = 0


def build_model(name: str) -> nn.Module:
    """The project's backbone (random init, nothing downloaded) with a 5-grade linear head."""
    backbone = Backbone(name)
    return nn.Sequential(backbone, nn.Linear(backbone.num_features, NUM_CLASSES))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(mode: Mode, args: argparse.Namespace, device: torch.device, batch: int) -> Result:
    """images/s of ``args.steps`` training steps after ``args.warmup`` untimed ones, in a fresh model."""
    torch.manual_seed(0)
    fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
    model = build_model(args.model).to(device=device, memory_format=fmt)
    step_model = torch.compile(model) if mode.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.bf16):
            loss = F.cross_entropy(step_model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    synchronize(device)
    warm = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - warm
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Result(mode, batch * args.steps / elapsed, 1e3 * elapsed / args.steps, warm - start, peak, batch=batch)


def run_mode(mode: Mode, args: argparse.Namespace, device: torch.device, batch: int | None = None) -> Result:
    """One mode in a clean state; a failing compile is reported in its row instead of hiding the others."""
    if mode.compile and args.no_compile:
        return Result(mode, note="skipped (--no-compile)")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if mode.compile:
        torch._dynamo.reset()  # a fresh compile cache (importing dynamo alone takes seconds)
    try:
        return measure(mode, args, device, batch or args.batch)
    except Exception as err:  # only torch.compile is expected to fail (no compiler, unsupported op)
        if not mode.compile:
            raise
        traceback.print_exc()
        return Result(mode, note=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}")


def table(results: list[Result]) -> list[str]:
    """The printed table: one row per mode, ratios against the fp32 eager row."""
    base = results[0].images_per_s
    lines = [f"{'mode':<32}{'img/s':>10}{'ms/step':>10}{'vs fp32 eager':>15}{'peak MiB':>10}{'warm-up s':>11}"]
    for r in results:
        name = r.mode.name if r.batch in (0, results[0].batch) else f"{r.mode.name} @{r.batch}"
        if r.note:
            lines.append(f"{name:<32}{r.note}")
            continue
        peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "n/a"
        lines.append(f"{name:<32}{r.images_per_s:>10.1f}{r.step_ms:>10.1f}{r.images_per_s / base:>14.2f}x"
                     f"{peak:>10}{r.warmup_s:>11.1f}")
    return lines


# ------------------------------------------------------------------------------------------ end to end


class StepTimer(Callback):
    """Seconds from making the trainer to the first batch (set-up: model to the device, loader workers
    started), over the warm-up batches, and over the timed ones."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.batches, self.marks = 0, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.marks.setdefault("first", time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches in (self.warmup, self.warmup + self.steps):
            synchronize(self.device)
            self.marks[self.batches] = time.perf_counter()

    def seconds(self) -> tuple[float, float, float]:
        m = self.marks
        return m["first"] - m["fit"], m[self.warmup] - m["first"], m[self.warmup + self.steps] - m[self.warmup]


def generated_images(root: Path, n: int, size: int) -> Path:
    """``prepare_gpu_bundle.write_images`` (a sibling script, so this folder goes on the path first)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prepare_gpu_bundle import write_images

    return write_images(root, n, size)


def compose(args: argparse.Namespace, root: Path):
    """The project's config as ``python -m ssl_dr.train`` composes it, with this run's sizes."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from ssl_dr.train import CONFIG_DIR

    overrides = [f"trainer={'cpu' if args.cpu else 'gpu'}", f"model.backbone.name={args.model}",
                 f"data.image_size={args.size}", f"data.batch_size={args.batch}", f"pretext.batch_size={args.batch}",
                 f"trainer.max_steps={args.e2e_warmup + args.e2e_steps}", "model.classifier.scheduler.warmup_steps=0",
                 f"paths.root_dir={root}", "logger=csv",
                 *([f"data.num_workers={args.workers}"] if args.workers is not None else []),
                 *(["scale.compile=true"] if args.e2e_compile else [])]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
    return cfg


def end_to_end(args: argparse.Namespace, cfg, device: torch.device, root: Path) -> dict[str, dict]:
    """Fine-tune and pretext fits of ``e2e_warmup + e2e_steps`` batches each, and the loader alone."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ssl_dr.data.cache import build_cache
    from ssl_dr.data.csv_source import CsvSource
    from ssl_dr.data.datamodule import FundusDataModule
    from ssl_dr.data.transforms import AugmentConfig, build_transform
    from ssl_dr.pretexts import build_pretext

    images = args.images or generated_images(root / "images", args.n, max(args.size, 32))
    records = CsvSource(images, csv="labels.csv", image_dir="images", group_column="patient_id").load()
    start = time.perf_counter()
    cache = build_cache(records, root / "cache", args.size, False, mask=cfg.data.preprocess.mask)
    print(f"image cache: {len(cache)} images from {images} at {args.size} px in {time.perf_counter() - start:.1f} s")
    augment = AugmentConfig(**OmegaConf.to_container(cfg.data.augment, resolve=True))
    results = {}
    for phase in ("fine-tune", "pretext"):
        backbone = instantiate(cfg.model.backbone)
        mean, std = backbone.normalization()
        kind = "finetune" if phase == "fine-tune" else "pretext"
        transforms = {"train_transform": build_transform(kind, args.size, mean, std, augment, cfg.seed),
                      "eval_transform": build_transform("eval", args.size, mean, std, augment, cfg.seed)}
        graded = phase == "fine-tune"
        module = (instantiate(cfg.model.classifier, backbone=backbone, inference={}, freeze_steps=0) if graded
                  else build_pretext(cfg, backbone))
        data = FundusDataModule(records, records[:1], with_grades=graded, batch_size=args.batch, seed=cfg.seed,
                                num_workers=cfg.data.num_workers, cache=cache, **transforms)
        timer = StepTimer(args.e2e_warmup, args.e2e_steps, device)
        timer.marks["fit"] = time.perf_counter()
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[instantiate(cfg.scale), timer],
                              max_epochs=-1, limit_val_batches=0, val_check_interval=1.0, check_val_every_n_epoch=1,
                              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                              default_root_dir=str(root / "run"))
        trainer.fit(module, datamodule=data)
        setup_s, warm_s, timed_s = timer.seconds()
        results[phase] = {"images_per_s": args.batch * args.e2e_steps / timed_s,
                          "per_image": 1 if graded else ROTATIONS, "setup_s": setup_s, "warmup_s": warm_s,
                          "loader": " ".join(f"{k}={v}" for k, v in data.loader_settings().items()),
                          "loader_images_per_s": loader_rate(data, device, args.e2e_steps)}
    return results


def loader_rate(data, device: torch.device, batches: int) -> float:
    """Images/s of the training DataLoader alone, batches copied to the device, after one warm-up epoch."""
    loader = data.train_dataloader()
    for _ in loader:  # starts the persistent workers
        pass
    seen, start = 0, time.perf_counter()
    while seen < batches * data.batch_size:
        for batch in loader:
            images = batch[0] if isinstance(batch, list | tuple) else batch
            images.to(device, non_blocking=True)
            seen += len(images)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def matching_mode(cfg, device: torch.device) -> Mode:
    """The model-only mode doing what the trainer config does: its precision, the scale callback's
    channels_last (``auto``: on CUDA only) and compile."""
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    channels_last = {"auto": device.type == "cuda", True: True, False: False}[cfg.scale.channels_last]
    for mode in MODES:
        if (mode.bf16, mode.channels_last, mode.compile) == (bf16, channels_last, bool(cfg.scale.compile)):
            return mode
    raise SystemExit(f"no model-only mode matches trainer.precision={cfg.trainer.precision} "
                     f"scale.channels_last={cfg.scale.channels_last} scale.compile={cfg.scale.compile}; "
                     "drop --e2e-compile on the CPU")


def projection(rates: dict[str, dict]) -> list[str]:
    """Minutes for the paper's protocol at APTOS size at the measured end-to-end rates."""
    pretext_images = APTOS_POOL * PRETEXT_EPOCHS
    finetune_images = FINETUNE_RUNS * FINETUNE_STEPS * FINETUNE_BATCH
    train_folds = APTOS_LABELLED * (FOLDS - 1) / FOLDS
    eval_images = (FINETUNE_RUNS / len(FRACTIONS) * VAL_CHECKS * VAL_SHARE * sum(FRACTIONS) * train_folds
                   + FINETUNE_RUNS * APTOS_LABELLED / FOLDS)
    ft_rate, pt = rates["fine-tune"]["images_per_s"], rates["pretext"]
    rows = [(f"pretext   {APTOS_POOL:,} images x {ROTATIONS} rotations x {PRETEXT_EPOCHS} epochs",
             pretext_images / pt["images_per_s"] / 60),
            (f"fine-tune {FINETUNE_RUNS} runs x {FINETUNE_STEPS:,} steps x batch {FINETUNE_BATCH}",
             finetune_images / ft_rate / 60),
            (f"validation + test, {eval_images:,.0f} images at the training rate (an upper bound)",
             eval_images / ft_rate / 60),
            (f"fit set-up, {FINETUNE_RUNS + 1} fits x the measured one",
             (pt["setup_s"] + FINETUNE_RUNS * rates["fine-tune"]["setup_s"]) / 60)]
    return ["projection, the paper's protocol at APTOS size at these end-to-end rates (DESIGN: <= 20 min):",
            *(f"  {name:<72}{minutes:8.1f} min" for name, minutes in rows),
            f"  {'total (process start-up and the image cache not included)':<72}"
            f"{sum(m for _, m in rows):8.1f} min"]


def report_end_to_end(rates: dict[str, dict], model_only: list[Result], match: Mode, batch: int) -> list[str]:
    by_batch = {(r.mode, r.batch): r.images_per_s for r in model_only if not r.note}
    lines = [f"end to end (real loader + augmentation + Lightning module + trainer config; compare: {match.name}):",
             f"{'phase':<11}{'img/s':>10}{'inputs/s':>10}{'model-only':>12}{'ratio':>8}{'loader img/s':>14}"
             f"{'set-up s':>10}{'warm-up s':>11}  loader"]
    for phase, r in rates.items():
        inputs_per_s = r["images_per_s"] * r["per_image"]
        model = by_batch.get((match, batch * r["per_image"]), float("nan"))
        r["ratio"] = inputs_per_s / model
        lines.append(f"{phase:<11}{r['images_per_s']:>10.1f}{inputs_per_s:>10.1f}{model:>12.1f}{r['ratio']:>7.2f}x"
                     f"{r['loader_images_per_s']:>14.1f}{r['setup_s']:>10.1f}{r['warmup_s']:>11.1f}  {r['loader']}")
    lines.append("ratio = network inputs/s end to end / model only at the same batch and mode (DESIGN: >= 0.9x)")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (small default sizes)")
    parser.add_argument("--model", default="densenet121", help="timm model name (e.g. resnet10t for a smoke run)")
    parser.add_argument("--size", type=int, help="image size in px (GPU 224, CPU 64)")
    parser.add_argument("--batch", type=int, help="images per step (GPU 32, CPU 8); the pretext feeds 4x as many")
    parser.add_argument("--warmup", type=int, help="untimed steps per model-only mode (GPU 5, CPU 1)")
    parser.add_argument("--steps", type=int, help="timed steps per model-only mode (GPU 20, CPU 3)")
    parser.add_argument("--e2e-warmup", type=int, help="untimed end-to-end batches per phase (GPU 10, CPU 1)")
    parser.add_argument("--e2e-steps", type=int, help="timed end-to-end batches per phase (GPU 100, CPU 3)")
    parser.add_argument("--images", type=Path, help="eyepacs-dev layout (labels.csv + images/); default: generated")
    parser.add_argument("--n", type=int, help="generated images when no --images (GPU 512, CPU 24)")
    parser.add_argument("--workers", help="data.num_workers for end to end (default: the config's, auto)")
    parser.add_argument("--e2e-compile", action="store_true", help="end to end with scale.compile=true")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile model-only mode")
    parser.add_argument("--no-e2e", action="store_true", help="model only, as before end to end existed")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    args = parser.parse_args(argv)
    for key, value in (CPU_DEFAULTS if args.cpu else GPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.images is not None and not (args.images / "labels.csv").is_file():
        parser.error(f"--images {args.images}: no labels.csv there (eyepacs-dev layout: labels.csv + images/)")
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU found; use --cpu for a CPU run")
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" lines per fit
    torch.backends.cudnn.benchmark = True  # every mode autotunes its convolutions during warm-up
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
          f"matmul precision {torch.get_float32_matmul_precision()} (PyTorch defaults)")
    print(f"model {args.model} + {NUM_CLASSES}-class head, {args.size} px, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per mode, AdamW, random tensors on the device")
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        cfg = None if args.no_e2e else compose(args, Path(tmp))
        match = None if args.no_e2e else matching_mode(cfg, device)
        # compile last (unless end to end compiles too): a slow compile must not cost the end-to-end figures
        first = [m for m in MODES if not m.compile or (match is not None and match.compile)]
        results = [run_mode(mode, args, device) for mode in first]
        if match is not None:  # the pretext's batch: every image in 4 rotations
            results.append(run_mode(match, args, device, args.batch * ROTATIONS))
        print("\n".join(table(results)))
        if not results[1].note:
            print(f"bf16 + channels_last vs fp32 eager: {results[1].images_per_s / results[0].images_per_s:.2f}x "
                  "(DESIGN: >= 3x on an H200 at 224 px)")
        if match is not None:
            rates = end_to_end(args, cfg, device, Path(tmp))
            print("\n".join(report_end_to_end(rates, results, match, args.batch)))
            print("\n".join(projection(rates)))
    rest = [run_mode(mode, args, device) for mode in MODES if mode not in first]
    if rest:
        print("\n".join(table(results[:1] + rest)[2:]))  # rows only, still against fp32 eager
    results += rest
    compiled = next(r for r in results if r.mode.compile and r.batch in (0, args.batch))  # 0: not measured
    if not compiled.note:
        print(f"bf16 + channels_last + compile: {compiled.images_per_s:.0f} images/s (DESIGN: >= 5,000 on an H200 "
              "at 224 px)")
    return results


if __name__ == "__main__":
    main()
