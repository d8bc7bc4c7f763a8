"""FLOPs are not latency, parameters are not memory: registered models measured side by side.

Runs :func:`dltricks.experiments.measure.flops_vs_latency` and :func:`params_vs_memory` on the same
models in one process and prints the tables and the ratios recorded in docs/measure.md and
docs/benchmarks.md.

    python benchmarks/measure_efficiency.py [--size 128] [--batch 8] [--threads 1] [--plots docs/img]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform

import torch

from dltricks.experiments.measure import (DEFAULT_MODELS, flops_vs_latency, params_vs_memory, plot_flops_vs_latency,
                                          plot_params_vs_memory)

# ---- settings -----------------------------------------------------------------------------------
SIZE = 128          # input side (px); 3 x SIZE x SIZE
BATCH = 8           # batch of the memory measurement (latency is at batch 1)
MIN_RUN_TIME = 0.3  # seconds of timed blocks per model (torch.utils.benchmark.blocked_autorange)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--plots", default=None, help="folder for the two PNGs (default: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.models.split(",")
    print(f"{platform.machine()} CPU, {args.threads} thread(s), torch {torch.__version__}, "
          f"{_dt.datetime.now():%Y-%m-%d %H:%M}, input 3x{args.size}x{args.size}")

    lat = flops_vs_latency(models, input_size=(3, args.size, args.size), min_run_time=MIN_RUN_TIME)
    print("\n| model | MACs | latency (ms) | IQR (ms) | achieved GMAC/s |\n|---|---:|---:|---:|---:|")
    for r in sorted(lat["rows"], key=lambda r: r["macs"]):
        print(f"| {r['model']} | {r['macs'] / 1e9:.3f} G | {r['latency_ms']:.1f} | {r['latency_iqr_ms']:.1f} | "
              f"{r['gmacs_per_s']:.1f} |")
    print(f"Spearman(MACs, latency) = {lat['spearman']:.2f}; fastest/slowest arithmetic rate = "
          f"{lat['max_rate_ratio']:.1f}x; disagreeing pairs: {lat['disagreeing_pairs'] or 'none'}")

    mem = params_vs_memory(models, input_size=(3, args.size, args.size), batch=args.batch)
    print(f"\nbatch {args.batch}, SGD + momentum ({mem['rows'][0]['method'] if mem['rows'] else '-'})")
    print("| model | params | training peak (MiB) | activations | inference peak (MiB) |\n|---|---:|---:|---:|---:|")
    for r in sorted(mem["rows"], key=lambda r: r["params"]):
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['train_peak_mib']:.1f} | "
              f"{r['activation_share']:.0%} | {r['inference_peak_mib']:.1f} |")
    print(f"Spearman(params, training peak) = {mem['spearman']:.2f}; disagreeing pairs: "
          f"{mem['disagreeing_pairs'] or 'none'}")
    if args.plots:
        print(plot_flops_vs_latency(lat, f"{args.plots}/flops_vs_latency.png"))
        print(plot_params_vs_memory(mem, f"{args.plots}/params_vs_memory.png"))


if __name__ == "__main__":
    main()
