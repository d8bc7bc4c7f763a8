"""FLOPs are not latency, parameters are not memory (the lecture's efficiency warnings), measured.

* Latency: a depthwise-separable 3x3 block does far fewer MACs than the full 3x3 convolution it
  replaces, but its depthwise stage does little arithmetic per byte moved, so the measured speed-up
  falls well short of the MAC ratio. Each "seed" is one interleaved timing round (median of blocks).
* Memory: a network with few parameters at high resolution saves more activations for backward
  than a parameter-heavy fully connected network; counted exactly with autograd's saved-tensor hooks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dltricks.tips import plots
from dltricks.tips.core import Context, Evidence
from dltricks.tips.experiments._measure import count_macs, count_params, median_latency, saved_activation_bytes


def flops_vs_latency(ctx: Context) -> Evidence:
    from dltricks.layers.conv import SeparableConv2d

    channels, size, batch = ctx.get("channels", 128), ctx.get("size", 28), ctx.get("batch", 8)
    dense = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    separable = SeparableConv2d(channels, channels, 3).eval()
    if ctx.get("same_block", False):  # a sanity setting in which the claim must fail
        separable = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    x = torch.randn(batch, channels, size, size)
    macs_dense, macs_sep = count_macs(dense, x), count_macs(separable, x)
    ev = Evidence(setup=f"3x3 conv vs depthwise-separable 3x3 (dltricks.layers.conv.SeparableConv2d), {channels} "
                        f"channels, input {batch}x{channels}x{size}x{size}, inference; latency = CPU time on one thread, "
                        f"fastest timed block (robust to other processes); one interleaved round per seed.")
    ev.values.update({"MACs dense": macs_dense, "MACs separable": macs_sep, "MAC ratio dense/separable": macs_dense / macs_sep})
    with torch.inference_mode():
        for _ in ctx.seeds:
            t_dense = median_latency(lambda: dense(x), repeats=ctx.get("repeats", 5), min_time=ctx.get("min_time", 0.03), stat="min", clock="cpu")
            t_sep = median_latency(lambda: separable(x), repeats=ctx.get("repeats", 5), min_time=ctx.get("min_time", 0.03), stat="min", clock="cpu")
            # log2 speed-ups so that effects are differences of logs (ratios)
            ev.add("predicted by MACs", log2_speedup=math.log2(macs_dense / macs_sep))
            ev.add("measured", log2_speedup=math.log2(t_dense / t_sep), latency_dense_ms=t_dense * 1e3,
                   latency_separable_ms=t_sep * 1e3)
    ev.plots.append(plots.bar_plot(ctx.path("speedup.png"), {k: [2 ** v for v in a["log2_speedup"]] for k, a in ev.arms.items()},
                                   ylabel="speed-up of separable over dense", title="MAC ratio vs measured latency ratio"))
    return ev


def params_vs_memory(ctx: Context) -> Evidence:
    """Two networks: few parameters + large activations vs many parameters + small activations."""
    size, batch = ctx.get("size", 64), ctx.get("batch", 64)
    conv_net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, 10))
    fc_net = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                           nn.Linear(512, 10))
    x = torch.randn(batch, 3, size, size)
    ev = Evidence(setup=f"training-step memory at batch {batch}, input 3x{size}x{size}: bytes autograd saves for "
                        f"backward + parameters + gradients (fp32).")
    rows = {}
    for name, net in (("conv net (high-res activations)", conv_net), ("MLP (large weights)", fc_net)):
        params = count_params(net)
        act = saved_activation_bytes(net, x)
        total = act + 2 * 4 * params
        rows[name] = (params, total)
        ev.values.update({f"{name}: params": params, f"{name}: saved activations (MB)": act / 2**20,
                          f"{name}: training memory (MB)": total / 2**20,
                          f"{name}: MACs": count_macs(net, x)})
    (p_conv, m_conv), (p_fc, m_fc) = rows.values()
    ev.headline = (f"params {p_conv:,} vs {p_fc:,}; training memory {m_conv / 2**20:.0f} MB vs {m_fc / 2**20:.0f} MB "
                   f"(conv net vs MLP)")
    ev.check("the conv net has fewer parameters", p_conv < p_fc)
    ev.check("...but needs more training memory", m_conv > m_fc)
    ev.plots.append(plots.bar_plot(ctx.path("params_memory.png"),
                                   {"params conv": [p_conv], "params MLP": [p_fc],
                                    "memory conv (B/4)": [m_conv / 4], "memory MLP (B/4)": [m_fc / 4]},
                                   ylabel="count (memory in 4-byte words)", title="parameters vs training memory", log=True))
    return ev
