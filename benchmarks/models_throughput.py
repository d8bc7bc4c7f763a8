"""Training throughput of CNN families: default (NCHW, eager) vs channels_last vs torch.compile.

One forward + backward pass in training mode (batch norm updating its statistics, no optimizer step) on a
batch of 16 random 128x128 images, for resnet50, convnext_tiny, efficientnet_b0, densenet121 and
mobilenet_v2. The settings of one model are timed side by side in round-robin order (each repeat times
every setting once, so load changes on a shared machine hit all settings alike); we report the median
images/s and its ratio to the default. Before timing, each setting's eval-mode logits are compared with
the default's, so a faster setting that computes something else would show up.

    .venv/bin/python benchmarks/models_throughput.py                       # all models, all settings
    .venv/bin/python benchmarks/models_throughput.py --models resnet50 --repeats 5 --threads 2

Settings:
    default         NCHW tensors, eager mode
    channels_last   model and input in NHWC memory format, eager mode
    compile         torch.compile(model) (inductor, default mode), NCHW
    compile+cl      torch.compile on the channels_last model and input
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from dltricks import create_model

MODELS = ("resnet50", "convnext_tiny", "efficientnet_b0", "densenet121", "mobilenet_v2")
SETTINGS = ("default", "channels_last", "compile", "compile+cl")


def make_setting(name: str, setting: str, *,
                 num_classes: int) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes)
    channels_last = setting in ("channels_last", "compile+cl")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    runner: Callable[[torch.Tensor], torch.Tensor] = model
    if setting.startswith("compile"):
        runner = torch.compile(model)
    return model, runner


def to_format(x: torch.Tensor, setting: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if setting in ("channels_last", "compile+cl") else x


def train_step(model: nn.Module, runner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    out = runner(x)
    out.float().logsumexp(dim=1).mean().backward()


def benchmark_model(name: str, settings: list[str], *, batch: int, size: int, repeats: int, steps: int,
                    warmup: int) -> dict[str, dict[str, float]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=generator)
    check = torch.randn(2, 3, size, size, generator=generator)
    built = {}
    results: dict[str, dict[str, float]] = {}
    reference = None
    for setting in settings:
        model, runner = make_setting(name, setting, num_classes=1000)
        # Correctness: eval-mode logits against the default's (same seed, same weights).
        model.eval()
        with torch.no_grad():
            logits = runner(to_format(check, setting)).float()
        if reference is None:
            reference = logits
        error = float((logits - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        model.train()
        xs = to_format(x, setting)
        start = time.perf_counter()
        for _ in range(warmup):  # compile happens here for the compiled settings
            train_step(model, runner, xs)
        results[setting] = {"warmup_s": time.perf_counter() - start, "rel_error": error, "times": []}
        print(f"  {name} {setting}: ready after {results[setting]['warmup_s']:.0f} s", file=sys.stderr, flush=True)
        built[setting] = (model, runner, xs)
    for _ in range(repeats):
        for setting in settings:
            model, runner, xs = built[setting]
            start = time.perf_counter()
            for _ in range(steps):
                train_step(model, runner, xs)
            results[setting]["times"].append((time.perf_counter() - start) / steps)
    for setting in settings:
        median = statistics.median(results[setting]["times"])
        results[setting]["images_per_s"] = batch / median
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per setting (median reported)")
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (includes compilation)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"batch {args.batch}, {args.size}x{args.size}, forward+backward (train mode), median of {args.repeats}")
    header = f"{'model':<16}" + "".join(f"{s:>15}" for s in args.settings)
    print(header + "   (images/s; ratio to default)")
    for name in args.models:
        results = benchmark_model(name, args.settings, batch=args.batch, size=args.size, repeats=args.repeats,
                                  steps=args.steps, warmup=args.warmup)
        base = results[args.settings[0]]["images_per_s"]
        cells = "".join(f"{r['images_per_s']:>8.1f} x{r['images_per_s'] / base:4.2f}" for r in results.values())
        print(f"{name:<16}{cells}")
        extra = ", ".join(f"{s}: warm-up {r['warmup_s']:.0f} s, max rel. logit diff {r['rel_error']:.1e}"
                          for s, r in results.items())
        print(f"{'':<16}{extra}", flush=True)


if __name__ == "__main__":
    main()
