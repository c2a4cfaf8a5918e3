"""Training throughput of the backbone: fp32 eager versus bf16 + channels_last versus + torch.compile.

DESIGN promises bf16 + channels_last at least 3x the fp32 eager images/s on an H100 at 224 px. This measures
exactly that, all modes in ONE process on the same device, so the ratios compare like with like: plain
PyTorch training steps (forward, 5-class cross-entropy, backward, AdamW step) of the project's ``Backbone``
+ a linear head on random tensors already on the device — the model, not the data loader (that is
``benchmarks/loader.py``). Warm-up steps (cuDNN autotuning, compilation) are timed separately and excluded;
the GPU is synchronised before every clock read; peak GPU memory is reset for every mode.

    python benchmarks/throughput.py                       # GPU: densenet121, 224 px, batch 64, 20 timed steps
    python benchmarks/throughput.py --cpu --no-compile    # CPU smoke run on small sizes
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
import traceback
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_dr.backbone import Backbone

NUM_CLASSES = 5
GPU_DEFAULTS = {"size": 224, "batch": 64, "warmup": 5, "steps": 20}
CPU_DEFAULTS = {"size": 64, "batch": 8, "warmup": 1, "steps": 3}


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


def build_model(name: str) -> nn.Module:
    """The project's backbone (random init, nothing downloaded) with a 5-grade linear head."""
    backbone = Backbone(name)
    return nn.Sequential(backbone, nn.Linear(backbone.num_features, NUM_CLASSES))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(mode: Mode, args: argparse.Namespace, device: torch.device) -> Result:
    """images/s of ``args.steps`` training steps after ``args.warmup`` untimed ones, in a fresh model."""
    torch.manual_seed(0)
    fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
    model = build_model(args.model).to(device=device, memory_format=fmt)
    step_model = torch.compile(model) if mode.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)

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
    return Result(mode, args.batch * args.steps / elapsed, 1e3 * elapsed / args.steps, warm - start, peak)


def run_mode(mode: Mode, args: argparse.Namespace, device: torch.device) -> Result:
    """One mode in a clean state; a failing compile is reported in its row instead of hiding the others."""
    if mode.compile and args.no_compile:
        return Result(mode, note="skipped (--no-compile)")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if mode.compile:
        torch._dynamo.reset()  # a fresh compile cache (importing dynamo alone takes seconds)
    try:
        return measure(mode, args, device)
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
        if r.note:
            lines.append(f"{r.mode.name:<32}{r.note}")
            continue
        peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "n/a"
        lines.append(f"{r.mode.name:<32}{r.images_per_s:>10.1f}{r.step_ms:>10.1f}{r.images_per_s / base:>14.2f}x"
                     f"{peak:>10}{r.warmup_s:>11.1f}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (small default sizes)")
    parser.add_argument("--model", default="densenet121", help="timm model name (e.g. resnet10t for a smoke run)")
    parser.add_argument("--size", type=int, help="image size in px (GPU 224, CPU 64)")
    parser.add_argument("--batch", type=int, help="images per step (GPU 64, CPU 8)")
    parser.add_argument("--warmup", type=int, help="untimed steps per mode (GPU 5, CPU 1)")
    parser.add_argument("--steps", type=int, help="timed steps per mode (GPU 20, CPU 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile mode")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    args = parser.parse_args(argv)
    for key, value in (CPU_DEFAULTS if args.cpu else GPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU found; use --cpu for a CPU run")
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # every mode autotunes its convolutions during warm-up
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
          f"matmul precision {torch.get_float32_matmul_precision()} (PyTorch defaults)")
    print(f"model {args.model} + {NUM_CLASSES}-class head, {args.size} px, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per mode, AdamW, random tensors on the device")
    results = [run_mode(mode, args, device) for mode in MODES]
    print("\n".join(table(results)))
    fast = results[1]
    if not fast.note:
        print(f"bf16 + channels_last vs fp32 eager: {fast.images_per_s / results[0].images_per_s:.2f}x "
              "(DESIGN: >= 3x on an H100 at 224 px)")
    return results


if __name__ == "__main__":
    main()
