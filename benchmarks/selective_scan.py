"""Selective scan on CPU: the chunked scan vs the sequential reference and a Blelloch parallel scan.

Setting (the issue's): B=8, L=1024, D=256, N=16, float32, forward + backward of the full S6 operator
(Δ bias + softplus, D skip, SiLU(z) gate, last state), 2 intra-op threads.

* time: median wall-clock of ``--repeats`` forward+backward passes after one warm-up; the methods are
  run round-robin (ref, blelloch, chunked, ref, ...) so that a change in machine load affects all of
  them alike. Also the median CPU time of the process (``time.process_time``, all threads): on a shared
  machine it is far less sensitive to other jobs than wall-clock time, and with one thread it is the
  compute time itself.
* peak memory: each method runs once in a fresh subprocess. With the inputs allocated and torch
  initialised, the process's resident-set high-water mark is reset (``echo 5 > /proc/self/clear_refs``,
  Linux >= 4.0) and the current resident set ``VmRSS`` is read; after the forward+backward call the
  high-water mark ``VmHWM`` (``/proc/self/status``) minus that ``VmRSS`` is the extra memory the call
  needed at its peak. Where clear_refs is not writable we fall back to the ``ru_maxrss`` difference,
  which can under-count. (Python's tracemalloc does not see PyTorch's CPU allocations.)

Usage: ``python benchmarks/selective_scan.py [--threads 2] [--repeats 5] [--length 1024]``.
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from dltricks.layers.ssm.selective_scan import selective_scan_blelloch, selective_scan_chunked, selective_scan_ref

METHODS = {"ref": selective_scan_ref, "blelloch": selective_scan_blelloch, "chunked": selective_scan_chunked}


def make_inputs(batch: int, length: int, dim: int, state: int, seed: int = 0) -> list[torch.Tensor]:
    """Mamba-like inputs: Δ = softplus(raw + bias) with bias giving dt in [1e-3, 1e-1], A = -(1..N)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (torch.log(torch.tensor(1e-1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    tensors = [
        torch.randn(batch, dim, length, generator=g),  # u
        0.5 * torch.randn(batch, dim, length, generator=g),  # raw Δ
        -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1),  # A
        torch.randn(batch, state, length, generator=g),  # B
        torch.randn(batch, state, length, generator=g),  # C
        torch.ones(dim),  # D
        torch.randn(batch, dim, length, generator=g),  # z
        dt + torch.log(-torch.expm1(-dt)),  # Δ bias = softplus⁻¹(dt)
    ]
    return [t.requires_grad_() for t in tensors]


def fwd_bwd(method: str, inputs: list[torch.Tensor]) -> None:
    for t in inputs:
        t.grad = None
    u, delta, A, B, C, D, z, bias = inputs
    out, h = METHODS[method](u, delta, A, B, C, D, z, bias, True, True)
    (out.sum() + h.sum()).backward()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(method: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.batch, args.length, args.dim, args.state)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set (VmHWM) to the current one
        before, how = _status_kib("VmRSS"), "VmHWM"
    except OSError:
        before, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    fwd_bwd(method, inputs)
    after = _status_kib("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (after - before) / 1024, "method": how}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.child, args)
        return
    methods = args.methods.split(",")
    torch.set_num_threads(args.threads)
    print(f"selective scan fwd+bwd, B={args.batch} L={args.length} D={args.dim} N={args.state} fp32, "
          f"{args.threads} threads, torch {torch.__version__}, {platform.machine()} ({platform.processor() or '?'})")

    # Correctness first: all methods agree with the reference on this input.
    inputs = make_inputs(args.batch, args.length, args.dim, args.state)
    u, delta, A, B, C, D, z, bias = inputs
    with torch.no_grad():
        ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
        for m in methods:
            err = (METHODS[m](u, delta, A, B, C, D, z, bias, True) - ref).abs().max().item()
            print(f"  max |{m} - ref| = {err:.2e}")

    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for m in methods:  # warm-up
        fwd_bwd(m, inputs)
    for _ in range(args.repeats):
        for m in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            fwd_bwd(m, inputs)
            times[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)

    peaks = {}
    for m in methods:
        cmd = [sys.executable, __file__, "--child", m, "--batch", str(args.batch), "--length", str(args.length),
               "--dim", str(args.dim), "--state", str(args.state), "--threads", str(args.threads)]
        peaks[m] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["peak_mib"]

    med = {m: statistics.median(ts) for m, ts in times.items()}
    med_cpu = {m: statistics.median(ts) for m, ts in cpu.items()}
    baselines = [m for m in ("ref", "blelloch") if m in med]
    best = min(baselines, key=med.__getitem__) if baselines else None
    best_cpu = min(baselines, key=med_cpu.__getitem__) if baselines else None
    print(f"\n{'method':10s} {'median s':>9s} {'min s':>8s} {'cpu s':>8s} {'peak MiB':>9s} {'speed-up (wall)':>16s} "
          f"{'speed-up (cpu)':>15s}")
    for m in methods:
        ratio = f"{med[best] / med[m]:.2f}x" if best else "-"
        ratio_cpu = f"{med_cpu[best_cpu] / med_cpu[m]:.2f}x" if best_cpu else "-"
        print(f"{m:10s} {med[m]:9.3f} {min(times[m]):8.3f} {med_cpu[m]:8.3f} {peaks[m]:9.1f} "
              f"{ratio:>16s} {ratio_cpu:>15s}")
    if best and "chunked" in med:
        print(f"\nchunked vs best of (ref, blelloch): {med[best] / med['chunked']:.2f}x faster in wall time [{best}], "
              f"{med_cpu[best_cpu] / med_cpu['chunked']:.2f}x in CPU time [{best_cpu}]; "
              f"peak memory {peaks['chunked']:.0f} MiB vs ref {peaks.get('ref', float('nan')):.0f} MiB")


if __name__ == "__main__":
    main()
