"""Latency and peak memory of attention against sequence length: full vs. efficient variants.

Compared side by side, on the same (B, heads, T, head_dim) queries, keys and values, forward pass only
(inference, ``torch.no_grad``):

* ``sdpa``       ``F.scaled_dot_product_attention`` (PyTorch picks its fused CPU kernel: flash-style
                 blocked softmax, so no T×T matrix is kept);
* ``plain``      :func:`dltricks.layers.attention.scaled_dot_product_attention`, the written-out reference
                 that materialises the T×T scores and weights (O(T²) memory);
* ``local``      :func:`dltricks.layers.attention.local_attention`, window r = 128 on each side, computed in
                 blocks of 128 queries against 384 keys (O(T·r) time and memory);
* ``linformer``  keys and values projected to k = 256 rows (E K, F V) then fused attention (O(T·k)).

Latency: median of ``torch.utils.benchmark`` blocked measurements (1 thread, after warm-up).
Peak memory: each (method, T) runs in a fresh subprocess that reports how far its peak resident set grows
during one call above the resident set after inputs and warm-up (Linux ``VmHWM`` after a reset); it
includes everything the call touches (scores, weights, outputs, temporaries). Freed heap memory is handed
back to the system first (``malloc_trim``) so that new allocations show up; values below ~1 MiB are
still floors, not exact sizes.

Usage::

    python benchmarks/attention_scaling.py                     # 256 .. 16384, prints a table
    python benchmarks/attention_scaling.py --plot docs/img/attention_scaling.png --markdown results.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from dltricks.layers.attention import local_attention, scaled_dot_product_attention

B, HEADS, HEAD_DIM = 1, 4, 64  # batch, heads, head width (a 256-wide model)
WINDOW = 128  # local attention: keys i-128 .. i+128
PROJ_LEN = 256  # Linformer k
PLAIN_MAX_BYTES = 4 * 2**30  # skip the plain reference when its T×T tensors would exceed this
METHODS = ("sdpa", "plain", "local", "linformer")


def make_inputs(T: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, HEADS, T, HEAD_DIM, generator=g) for _ in range(3))
    e = torch.randn(PROJ_LEN, T, generator=g) / math.sqrt(PROJ_LEN)
    f = torch.randn(PROJ_LEN, T, generator=g) / math.sqrt(PROJ_LEN)
    return q, k, v, e, f


def run(method: str, q, k, v, e, f) -> torch.Tensor:
    if method == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if method == "plain":
        return scaled_dot_product_attention(q, k, v)
    if method == "local":
        return local_attention(q, k, v, window=WINDOW)[0]
    if method == "linformer":
        # (k, T) @ (B, h, T, d) -> (B, h, k, d)
        return F.scaled_dot_product_attention(q, e @ k, f @ v)
    raise ValueError(method)


def plain_bytes(T: int) -> int:
    """The reference keeps about three B·h·T² float32 tensors alive (scores, scaled scores, weights)."""
    return 3 * B * HEADS * T * T * 4


def skip_reason(method: str, T: int) -> str | None:
    if method == "plain" and plain_bytes(T) > PLAIN_MAX_BYTES:
        return f"needs ~{plain_bytes(T) / 2**30:.0f} GiB of T×T tensors"
    return None


def measure_memory(method: str, T: int) -> float:
    """Peak resident-memory growth (MiB) during one call, in a fresh process (Linux: the peak is reset by
    writing 5 to /proc/self/clear_refs, then read from VmHWM)."""
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import attention_scaling as a\n"
        "def status(key):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))\n"
        f"a.run({method!r}, *a.make_inputs(256))\n"
        f"x = a.make_inputs({T})\n"
        "import ctypes, gc; gc.collect(); ctypes.CDLL('libc.so.6').malloc_trim(0)\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = status('VmRSS')\n"
        "with torch.no_grad():\n"
        f"    out = a.run({method!r}, *x)\n"
        "print(status('VmHWM') - base)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024  # KiB -> MiB


def measure_latency(method: str, T: int, min_run_time: float) -> float:
    inputs = make_inputs(T)
    with torch.no_grad():
        run(method, *inputs)  # warm-up
        timer = benchmark.Timer("run(method, *inputs)", globals={"run": run, "method": method, "inputs": inputs},
                                num_threads=1)
        return timer.blocked_autorange(min_run_time=min_run_time).median


def check_outputs(T: int = 512) -> None:
    """The compared functions agree where they should: plain == sdpa; local == banded plain."""
    from dltricks.layers.attention import local_attention_mask

    q, k, v, e, f = make_inputs(T)
    torch.testing.assert_close(run("plain", q, k, v, e, f), run("sdpa", q, k, v, e, f), rtol=1e-4, atol=1e-5)
    banded = scaled_dot_product_attention(q, k, v, attn_mask=local_attention_mask(T, WINDOW))
    torch.testing.assert_close(run("local", q, k, v, e, f), banded, rtol=1e-4, atol=1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="256,512,1024,2048,4096,8192,16384")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per latency measurement")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--plot", default=None, help="write a PNG here")
    parser.add_argument("--markdown", default=None, help="write the markdown table here")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for flag, target in (("--plot", args.plot), ("--markdown", args.markdown), ("--json", args.json)):
        # Checked before minutes of measurements, not after (docs/img exists only in the repository root).
        if target and not Path(target).resolve().parent.is_dir():
            parser.error(f"{flag} {target}: folder {Path(target).parent} does not exist here ({Path.cwd()}); "
                         "run from the repository root or give another path")
    torch.set_num_threads(1)
    lengths = [int(t) for t in args.lengths.split(",")]
    methods = args.methods.split(",")
    check_outputs()

    results: dict[str, dict[int, dict[str, float | str]]] = {m: {} for m in methods}
    started = time.strftime("%Y-%m-%d %H:%M")
    for T in lengths:
        for method in methods:
            reason = skip_reason(method, T)
            if reason:
                results[method][T] = {"skipped": reason}
                print(f"T={T:6d} {method:10s} skipped: {reason}", flush=True)
                continue
            latency = measure_latency(method, T, args.min_run_time)
            memory = float("nan") if args.no_memory else measure_memory(method, T)
            results[method][T] = {"latency_ms": latency * 1e3, "peak_mib": memory}
            print(f"T={T:6d} {method:10s} {latency * 1e3:10.2f} ms  {memory:9.1f} MiB", flush=True)

    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} thread, torch {torch.__version__}, {started}"
    table = markdown_table(results, lengths, methods, machine)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine,
                       "results": {m: {str(t): r for t, r in v.items()} for m, v in results.items()}},
                      fh, indent=2)
    if args.plot:
        plot(results, lengths, methods, args.plot, machine)


def markdown_table(results, lengths, methods, machine: str) -> str:
    lines = [f"B={B}, heads={HEADS}, head_dim={HEAD_DIM}, forward only; local window ±{WINDOW}; "
             f"Linformer k={PROJ_LEN}. {machine}.", "",
             "| T | " + " | ".join(f"{m} ms" for m in methods) + " | " + " | ".join(f"{m} MiB" for m in methods)
             + " | sdpa / local time |",
             "|---:|" + "---:|" * (2 * len(methods) + 1)]
    for T in lengths:
        cells_t, cells_m = [], []
        for m in methods:
            r = results[m].get(T, {})
            if "skipped" in r:
                cells_t.append("skipped")
                cells_m.append("skipped")
            else:
                cells_t.append(f"{r['latency_ms']:.1f}")
                cells_m.append(f"{r['peak_mib']:.0f}")
        ratio = ""
        if "sdpa" in results and "local" in results and "latency_ms" in results["sdpa"].get(T, {}) \
                and "latency_ms" in results["local"].get(T, {}):
            ratio = f"{results['sdpa'][T]['latency_ms'] / results['local'][T]['latency_ms']:.2f}×"
        lines.append(f"| {T} | " + " | ".join(cells_t) + " | " + " | ".join(cells_m) + f" | {ratio} |")
    skipped = {m: [T for T in lengths if "skipped" in results[m].get(T, {})] for m in methods}
    for m, ts in skipped.items():
        if ts:
            lines.append("")
            lines.append(f"{m} skipped at T = {', '.join(map(str, ts))}: {results[m][ts[0]]['skipped']} "
                         f"(limit {PLAIN_MAX_BYTES / 2**30:.0f} GiB).")
    return "\n".join(lines) + "\n"


def plot(results, lengths, methods, path: str, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        ts = [T for T in lengths if "latency_ms" in results[m].get(T, {})]
        ax_t.plot(ts, [results[m][T]["latency_ms"] for T in ts], marker="o", label=m)
        ax_m.plot(ts, [results[m][T]["peak_mib"] for T in ts], marker="o", label=m)
    for ax, label in ((ax_t, "latency (ms)"), (ax_m, "peak memory growth (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(f"Attention forward, B={B}, heads={HEADS}, head_dim={HEAD_DIM} ({machine})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
