"""Attention tips, measured on the attention layers of :mod:`dltricks.layers.attention`.

Scaling: full self-attention costs O(T^2 D) per layer, a local window O(T w D) and Linformer O(T k D)
(Wang et al. 2020). We time one self-attention layer at growing T and fit the slope of log(time)
against log(T): about 2 for quadratic cost, about 1 for linear cost. Each seed is one timing round.
"""

from __future__ import annotations

import math

import torch

from dltricks.measure import time_function
from dltricks.tips import plots
from dltricks.tips.core import Context, Evidence


def _slope(lengths: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(length)."""
    xs, ys = [math.log(n) for n in lengths], [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def attention_scaling(ctx: Context) -> Evidence:
    from dltricks.layers.attention import LinformerSelfAttention, LocalSelfAttention, MultiHeadAttention

    lengths = list(ctx.get("lengths", (512, 1024, 2048, 4096)))
    dim, heads, window, proj = ctx.get("embed_dim", 64), ctx.get("num_heads", 4), ctx.get("window", 32), ctx.get("proj_len", 64)
    layers = {
        "full attention": MultiHeadAttention(dim, heads),
        f"local window {window}": LocalSelfAttention(dim, heads, window=window),
        f"Linformer k={proj}": LinformerSelfAttention(dim, heads, seq_len=max(lengths), proj_len=proj),
    }
    ev = Evidence(setup=f"one self-attention layer (D={dim}, {heads} heads), batch 1, inference, lengths {lengths}; "
                        f"time = CPU time on one thread, median of timed blocks (dltricks.measure.time_function, "
                        f"robust to other processes); slope = d log(time) / d log(T).")
    curves: dict[str, list[list[float]]] = {name: [] for name in layers}
    with torch.inference_mode():
        for seed in ctx.seeds:
            torch.manual_seed(seed)
            for name, layer in layers.items():
                layer.eval()
                times = []
                for n in lengths:
                    x = torch.randn(1, n, dim)
                    repeats = ctx.get("repeats", 3)
                    times.append(time_function(lambda: layer(x), min_run_time=ctx.get("min_time", 0.02) * repeats,
                                               min_runs=repeats, warmup=2, cpu_time=True).median)
                ev.add(name, slope=_slope(lengths, times), ms_at_max_length=times[-1] * 1e3)
                curves[name].append([t * 1e3 for t in times])
    ev.plots.append(plots.curve_plot(ctx.path("scaling.png"), curves, x=lengths, xlabel="sequence length T",
                                     ylabel="ms per layer", title="self-attention time vs length (log-log)", log=True))
    ev.headline = ", ".join(f"{name}: slope {sum(a['slope']) / len(a['slope']):.2f}" for name, a in ev.arms.items())
    return ev
