"""FLOPs are not latency, parameters are not memory (the lecture's efficiency warnings), measured.

* Latency: a depthwise-separable 3x3 block does far fewer MACs than the full 3x3 convolution it
  replaces, but its depthwise stage does little arithmetic per byte moved, so the measured speed-up
  falls well short of the MAC ratio. MACs from :func:`dltricks.measure.count_macs`; time from
  :func:`dltricks.measure.time_function` in CPU time on one thread (robust to other jobs on the
  machine). Each "seed" is one timing round of both blocks (median over timed blocks).
* Memory: a network with few parameters at high resolution needs more memory for a training step
  than a parameter-heavy fully connected network, because of the activations it keeps for backward:
  peak memory of one SGD step from :func:`dltricks.measure.peak_memory` (allocator events on CPU).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dltricks.evidence import LECTURE, README, Context, Effect, Evidence, Exact, plots, tip
from dltricks.layers.conv import SeparableConv2d
from dltricks.measure import count_macs, count_params, peak_memory, time_function

ARCH = "Architectures"


@tip(id="arch.flops-vs-latency", title="FLOPs are not latency",
     claim="At MobileNet's first-stage shape (32 channels, 112x112) a depthwise-separable 3x3 block needs 7x fewer "
           "MACs than a full 3x3 convolution but runs far less than 7x faster: MACs overestimate the real speed-up.",
     cite=(LECTURE.at(1040, 1042, "FLOPs are not a good measure"), LECTURE.at(1569, 1580, "FLOPs and FPS differ"),
           README.at(63, 65, "depthwise-separable convolutions for limited compute")),
     source="Ma et al., ShuffleNet v2 2018", section=ARCH,
     exercises=(SeparableConv2d, count_macs, time_function),
     quick={"channels": 32, "size": 112, "batch": 1, "repeats": 5, "min_time": 0.02},
     full={"channels": 32, "size": 112, "batch": 1, "repeats": 9, "min_time": 0.05}, seeds={"quick": 3, "full": 5},
     budget_s=5, rule=Effect("log2_speedup", "predicted by MACs", "measured", min_effect=0.5))
def flops_vs_latency(ctx: Context) -> Evidence:
    channels, size, batch = ctx.get("channels", 128), ctx.get("size", 28), ctx.get("batch", 8)
    dense = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    separable = SeparableConv2d(channels, channels, 3).eval()
    if ctx.get("same_block", False):  # a sanity setting in which the claim must fail
        separable = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    x = torch.randn(batch, channels, size, size)
    macs_dense, macs_sep = count_macs(dense, x), count_macs(separable, x)
    ev = Evidence(setup=f"3x3 conv vs depthwise-separable 3x3 (dltricks.layers.conv.SeparableConv2d), {channels} "
                        f"channels, input {batch}x{channels}x{size}x{size}, inference; latency = CPU time on one "
                        f"thread, median of timed blocks (dltricks.measure.time_function, robust to other processes); "
                        f"one round of both blocks per seed.")
    ev.values.update({"MACs dense": macs_dense, "MACs separable": macs_sep,
                      "MAC ratio dense/separable": macs_dense / macs_sep})

    def seconds(layer: nn.Module) -> float:
        return time_function(lambda: layer(x), min_run_time=ctx.get("min_time", 0.03) * ctx.get("repeats", 5),
                             min_runs=ctx.get("repeats", 5), warmup=2, cpu_time=True).median

    with torch.inference_mode():
        for _ in ctx.seeds:
            t_dense, t_sep = seconds(dense), seconds(separable)
            # log2 speed-ups so that effects are differences of logs (ratios)
            ev.add("predicted by MACs", log2_speedup=math.log2(macs_dense / macs_sep))
            ev.add("measured", log2_speedup=math.log2(t_dense / t_sep), latency_dense_ms=t_dense * 1e3,
                   latency_separable_ms=t_sep * 1e3)
    ev.plots.append(plots.bar_plot(ctx.path("speedup.png"),
                                   {k: [2 ** v for v in a["log2_speedup"]] for k, a in ev.arms.items()},
                                   ylabel="speed-up of separable over dense",
                                   title="MAC ratio vs measured latency ratio"))
    return ev


@tip(id="arch.params-vs-memory", title="Parameters are not memory",
     claim="A small conv net with 300x fewer parameters than an MLP can still need more memory for a training "
           "step (batch 64, 64x64 inputs), because activations at high resolution dominate.",
     cite=LECTURE.at(1556, 1558, "many parameters are not much memory"), section=ARCH,
     exercises=(nn.Conv2d, peak_memory),
     seeds={"quick": 1, "full": 1}, budget_s=1,
     rule=Exact(checks=("the conv net has fewer parameters", "...but needs more training memory")))
def params_vs_memory(ctx: Context) -> Evidence:
    """Two networks: few parameters + large activations vs many parameters + small activations."""
    size, batch = ctx.get("size", 64), ctx.get("batch", 64)
    conv_net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, 10))
    fc_net = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                           nn.Linear(512, 10))
    x = torch.randn(batch, 3, size, size)
    ev = Evidence(setup=f"peak memory of one training step (forward, backward, SGD-momentum step; fp32) at batch "
                        f"{batch}, input 3x{size}x{size}, from CPU allocator events (dltricks.measure.peak_memory): "
                        f"parameters, gradients, optimizer state, input and every activation live at the peak.")
    rows = {}
    for name, net in (("conv net (high-res activations)", conv_net), ("MLP (large weights)", fc_net)):
        params = count_params(net).total
        mem = peak_memory(net, [x], mode="train", optimizer="sgd")
        total = mem.peak_bytes
        rows[name] = (params, total)
        ev.values.update({f"{name}: params": params, f"{name}: training memory (MB)": total / 2**20,
                          f"{name}: memory beyond weights, optimizer state and input (MB)": mem.extra_bytes / 2**20,
                          f"{name}: MACs": count_macs(net, x)})
    (p_conv, m_conv), (p_fc, m_fc) = rows.values()
    ev.headline = (f"params {p_conv:,} vs {p_fc:,}; training memory {m_conv / 2**20:.0f} MB vs {m_fc / 2**20:.0f} MB "
                   f"(conv net vs MLP)")
    ev.check("the conv net has fewer parameters", p_conv < p_fc)
    ev.check("...but needs more training memory", m_conv > m_fc)
    ev.plots.append(plots.bar_plot(ctx.path("params_memory.png"),
                                   {"params conv": [p_conv], "params MLP": [p_fc],
                                    "memory conv (B/4)": [m_conv / 4], "memory MLP (B/4)": [m_fc / 4]},
                                   ylabel="count (memory in 4-byte words)", title="parameters vs training memory",
                                   log=True))
    return ev
