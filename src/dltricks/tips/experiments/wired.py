"""Tips whose experiments live in other areas of dltricks: these functions call them (segmentation in
:mod:`dltricks.experiments.segmentation`, SSM layers, SPP) and turn their numbers into :class:`Evidence`.
Nothing is re-implemented here; the checks compare the numbers those experiments return.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dltricks.tips.core import Context, Evidence
from dltricks.tips.experiments._measure import support_receptive_field


# --------------------------------------------------------------------------------------------- segmentation
def aspp_degeneration(ctx: Context) -> Evidence:
    """DeepLabV3's Fig. 4 via :func:`dltricks.experiments.segmentation.aspp_degeneration`, plus the
    receptive field of the image-pooling branch (:class:`dltricks.layers.aspp.ASPPPooling`)."""
    from dltricks.experiments.segmentation import aspp_degeneration as run
    from dltricks.experiments.segmentation import plot_aspp_degeneration
    from dltricks.layers.aspp import ASPPPooling

    size, max_rate = ctx.get("feature_size", 65), ctx.get("max_rate", 72)
    res = run(feature_size=size, rates=tuple(range(1, max_rate + 1)))
    frac = res["mean_valid_fraction"]
    rates = res["rates"]
    ev = Evidence(setup=f"3x3 atrous filter on a {size}x{size} feature map, rates 1..{max_rate} "
                        f"(dltricks.experiments.segmentation.aspp_degeneration); receptive field of the image-pooling "
                        f"branch and of the degenerate 3x3 branch from the input-gradient support.")
    for r in (1, 6, 12, 18, 24, 36, size - 1, max_rate):
        if r in rates:
            ev.values[f"mean valid fraction at rate {r}"] = round(frac[rates.index(r)], 4)
    degenerate = res["degenerate_from_rate"]
    ev.values["rate from which only the centre tap is valid"] = degenerate
    ev.check("valid-weight fraction falls as the rate grows",
             all(b <= a + 1e-12 for a, b in zip(frac, frac[1:])) and frac[-1] < frac[0])
    ev.check("at a rate near the map size the 3x3 filter degenerates to its centre tap",
             degenerate is not None and degenerate <= size)
    channels = 4
    pool_h, pool_w, pool_mask = support_receptive_field(ASPPPooling(channels, channels, norm_layer=None),
                                                        in_chans=channels, size=size)
    rate = degenerate or max_rate
    conv = nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate, bias=False)
    conv_h, conv_w, conv_mask = support_receptive_field(conv, in_chans=channels, size=size)
    ev.values.update({"image pooling: input pixels seen by one output": int(pool_mask.sum()),
                      f"3x3 at rate {rate}: input pixels seen by one output": int(conv_mask.sum())})
    ev.check("image pooling sees the whole map", bool(pool_mask.all()))
    ev.check("the degenerate 3x3 branch sees a single pixel", int(conv_mask.sum()) == 1)
    ev.headline = (f"mean valid fraction {frac[0]:.2f} at rate 1 -> {frac[rates.index(24)] if 24 in rates else frac[-1]:.2f} "
                   f"at 24; only the centre tap from rate {degenerate}; image pooling sees {int(pool_mask.sum()):,} px")
    ev.plots.append(plot_aspp_degeneration(res, ctx.path("aspp_degeneration.png")).name)
    return ev


def skip_connections(ctx: Context) -> Evidence:
    """U-Net with vs without skips on ISBI 2012 via :func:`dltricks.experiments.segmentation.skip_ablation`."""
    from dltricks.experiments.segmentation import plot_skip_ablation, skip_ablation

    options = {k: ctx[k] for k in ("base_channels", "steps", "batch_size", "crop_size", "lr") if k in ctx.settings}
    ev = Evidence(setup=f"U-Net with vs without skip connections on the ISBI 2012 membrane slices (25 train / 5 "
                        f"held-out), {options}; accuracy within 2 px of a true boundary vs elsewhere "
                        f"(dltricks.experiments.segmentation.skip_ablation).")
    last: dict[str, Any] = {}
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        last = skip_ablation(seed=seed, amp=False, **options)
        for key, name in (("with_skips", "with skips"), ("without_skips", "without skips")):
            run = last["runs"][key]
            ev.add(name, **{m: run[m] for m in ("boundary_accuracy", "interior_accuracy", "boundary_f1", "dice") if m in run})
    ev.plots.append(plot_skip_ablation(last, ctx.path("skips.png")).name)
    return ev


def output_stride(ctx: Context) -> Evidence:
    """DeepLabV3 at output stride 8 vs 32 via :func:`dltricks.experiments.segmentation.output_stride_tradeoff`."""
    from dltricks.experiments.segmentation import output_stride_tradeoff, plot_output_stride

    options = {k: ctx[k] for k in ("encoder", "steps", "batch_size", "crop_size", "lr") if k in ctx.settings}
    strides = tuple(ctx.get("output_strides", (8, 32)))
    ev = Evidence(setup=f"DeepLabV3 at output strides {strides} on ISBI 2012, {options} "
                        f"(dltricks.experiments.segmentation.output_stride_tradeoff).")
    last: dict[str, Any] = {}
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        last = output_stride_tradeoff(strides, seed=seed, amp=False, **options)
        for s in strides:
            run = last["runs"][str(s)]
            ev.add(f"output stride {s}", **{m: run[m] for m in ("boundary_f1", "dice", "macs_512") if m in run})
    ev.plots.append(plot_output_stride(last, ctx.path("output_stride.png")).name)
    return ev


# --------------------------------------------------------------------------------------------- SPP
def spp_fixed_length(ctx: Context) -> Evidence:
    """Spatial pyramid pooling (:mod:`dltricks.layers.spp`) on inputs of several sizes."""
    from dltricks.layers import spp as spp_module

    cls = next(getattr(spp_module, n) for n in ("SpatialPyramidPool", "SpatialPyramidPooling", "SPP")
               if hasattr(spp_module, n))
    levels = tuple(ctx.get("levels", (1, 2, 4)))
    channels = ctx.get("channels", 8)
    layer = cls(levels)
    sizes = list(ctx.get("sizes", (7, 13, 24, 33, 64)))
    lengths = {}
    for s in sizes:
        with torch.no_grad():
            y = layer(torch.randn(2, channels, s, s + 3))
        lengths[s] = tuple(y.shape)
    expected = channels * sum(n * n for n in levels)
    ev = Evidence(setup=f"{cls.__name__}{levels} on a {channels}-channel map of sizes {sizes} (width = size + 3)")
    ev.values.update({f"output shape at {s}x{s + 3}": str(v) for s, v in lengths.items()})
    ev.check("same output length for every input size", len(set(lengths.values())) == 1)
    ev.check("output length = C x sum of bins^2", all(v[-1] == expected for v in lengths.values()))
    ev.headline = f"output {next(iter(lengths.values()))} for inputs {sizes[0]}..{sizes[-1]} px"
    return ev


# --------------------------------------------------------------------------------------------- SSM
def mamba_adaptive_depth(ctx: Context) -> Evidence:
    """The README's "Mamba adapts depth/width to the input (integrated attention)" against the published
    block, via :func:`dltricks.experiments.ssm.claim_dynamic_depth_width` (forward hooks record which
    modules run and the widths they output, for inputs of different lengths and content)."""
    from dltricks.experiments.ssm import claim_dynamic_depth_width

    res = claim_dynamic_depth_width(d_model=ctx.get("d_model", 64), depth=ctx.get("depth", 2),
                                    lengths=tuple(ctx.get("lengths", (8, 64))))
    traces = res["traces"]
    ev = Evidence(setup=f"a {ctx.get('depth', 2)}-layer Mamba model (d_model {ctx.get('d_model', 64)}) run on inputs "
                        f"of lengths {sorted({t['length'] for t in traces})}, random and constant tokens "
                        f"(dltricks.experiments.ssm.claim_dynamic_depth_width).")
    ev.values.update({f"{t['content']} input of {t['length']} tokens: modules run": t["modules_run"] for t in traces})
    ev.values.update({f"fixed size: {k}": v for k, v in res["fixed_sizes"].items()})
    ev.values.update({f"{t['content']} input of {t['length']} tokens: std of delta per layer":
                      ", ".join(f"{d:.3g}" for d in t["delta_std"]) for t in traces})
    ev.check("executed layers differ between inputs", not res["same_modules_for_every_input"])
    ev.check("layer output widths differ between inputs", not res["same_widths_for_every_input"])
    ev.check("the block contains an attention module", bool(res["has_attention_module"]))
    ev.headline = (f"same {traces[0]['modules_run']} modules and widths for all {len(traces)} inputs; "
                   f"attention module: {'yes' if res['has_attention_module'] else 'no'}; only delta/B/C vary")
    ev.notes = res["explanation"]
    return ev


def selective_copying(ctx: Context) -> Evidence:
    """The Mamba paper's gate ablation on Selective Copying: no-gate S4 vs no-gate S6, via
    :func:`dltricks.experiments.ssm.gate_ablation`."""
    from dltricks.experiments.ssm import SeqTrainConfig, gate_ablation

    seq_len, steps = ctx.get("seq_len", 128), ctx.get("steps", 150)
    ev = Evidence(setup=f"Selective Copying (16 tokens to recall, vocabulary 16, length {seq_len}); 2-layer models, "
                        f"d_model {ctx.get('d_model', 64)}, {steps} AdamW steps of batch 32 "
                        f"(dltricks.experiments.ssm.gate_ablation).")
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        cfg = SeqTrainConfig(steps=steps, batch_size=32, seq_len=seq_len, lr=2e-3, eval_every=0, target_accuracy=None,
                             seed=seed)
        res = gate_ablation(configs=("S4 (no gate)", "S6 (no gate)"), d_model=ctx.get("d_model", 64),
                            seq_len=seq_len, train=cfg, log=None)
        ev.add("S4", accuracy=res["models"]["S4 (no gate)"]["accuracy"])
        ev.add("S6", accuracy=res["models"]["S6 (no gate)"]["accuracy"])
    from dltricks.tips import plots

    ev.plots.append(plots.bar_plot(ctx.path("accuracy.png"), {a: m["accuracy"] for a, m in ev.arms.items()},
                                   ylabel="token accuracy", title="Selective Copying, no gate"))
    return ev


def mambaout_h2(ctx: Context) -> Evidence:
    """H2: Mamba vs the Gated CNN (no SSM) on long causal tasks, via :func:`dltricks.experiments.ssm.h2_sequence`."""
    from dltricks.experiments.ssm import h2_sequence, plot_h2

    tasks = tuple(ctx.get("tasks", ("selective_copying",)))
    mixers = ("mamba", "gated_cnn")
    ev = Evidence(setup=f"h2_sequence({'quick' if ctx.get('quick', True) else 'full'} settings) on {', '.join(tasks)}; "
                        f"mixers Mamba and causal Gated CNN with the same width, depth and steps "
                        f"(dltricks.experiments.ssm.h2_sequence). One value per task.")
    res = h2_sequence(mixers=mixers, tasks=tasks, quick=ctx.get("quick", True), log=None)
    for task in tasks:  # tasks play the role of seeds: paired by task
        for mixer, name in (("mamba", "Mamba"), ("gated_cnn", "Gated CNN")):
            run = res["tasks"][task][mixer]
            ev.add(name, accuracy=run.get("accuracy", run.get("val_accuracy", float("nan"))))
    ev.plots.append(plot_h2(res, ctx.path("h2.png")).name)
    return ev


def mambaout_h1(ctx: Context) -> Evidence:
    """H1: MambaOut vs Vision Mamba (and ViT, ConvNeXt) on CIFAR-10, via :func:`dltricks.experiments.ssm.h1_vision`."""
    from dltricks.experiments.ssm import h1_vision

    options = {k: ctx[k] for k in ("epochs", "batch_size", "subset", "val_subset") if k in ctx.settings}
    ev = Evidence(setup=f"CIFAR-10 (the shared image-folder copy), one shared recipe, {options} "
                        f"(dltricks.experiments.ssm.h1_vision).")
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        res = h1_vision(seed=seed, log=None, **options)
        for label, run in res["models"].items():
            ev.add(label, val_acc=run["val_accuracy"], params=run["params"])
    return ev
