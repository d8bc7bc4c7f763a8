"""Dense-prediction tips. Their experiments live in :mod:`dltricks.experiments.segmentation`; the functions
here call them and turn their numbers into :class:`~dltricks.evidence.Evidence`. Nothing is
re-implemented: the checks compare the numbers those experiments return.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dltricks.data import isbi
from dltricks.evidence import DILATED, LECTURE, README, Context, Effect, Evidence, Exact, tip
from dltricks.experiments import segmentation
from dltricks.experiments.conv import centre_support
from dltricks.layers.aspp import ASPPPooling
from dltricks.models import segmentation as segmentation_models

SEG = "Dense prediction"


@tip(id="seg.aspp-degeneration", title="ASPP degenerates at large rates",
     claim="As the atrous rate approaches the feature-map size, fewer and fewer of a 3x3 filter's weights fall on "
           "the map (the rest hit padding) until only its centre tap is left, a 1x1 filter; the image-pooling "
           "branch restores global context (one output sees the whole map).",
     cite=DILATED.at(1, topic="its lines 46-48: ASPP degenerates at large rates, image pooling added"),
     source="Chen et al., DeepLabV3 2017, Fig. 4", section=SEG,
     exercises=(segmentation.aspp_degeneration, ASPPPooling, centre_support), seeds={"quick": 1, "full": 1},
     quick={"feature_size": 65, "max_rate": 72}, full={"feature_size": 65, "max_rate": 72}, budget_s=2,
     rule=Exact(checks=("valid-weight fraction falls as the rate grows",
                        "at a rate near the map size the 3x3 filter degenerates to its centre tap",
                        "image pooling sees the whole map", "the degenerate 3x3 branch sees a single pixel")))
def aspp_degeneration(ctx: Context) -> Evidence:
    """DeepLabV3's Fig. 4 via :func:`dltricks.experiments.segmentation.aspp_degeneration`, plus the
    receptive field of the image-pooling branch (:class:`dltricks.layers.aspp.ASPPPooling`)."""
    size, max_rate = ctx.get("feature_size", 65), ctx.get("max_rate", 72)
    res = segmentation.aspp_degeneration(feature_size=size, rates=tuple(range(1, max_rate + 1)))
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
    _, pool_mask = centre_support(ASPPPooling(channels, channels, norm_layer=None), in_chans=channels, size=size)
    rate = degenerate or max_rate
    conv = nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate, bias=False)
    _, conv_mask = centre_support(conv, in_chans=channels, size=size)
    ev.values.update({"image pooling: input pixels seen by one output": int(pool_mask.sum()),
                      f"3x3 at rate {rate}: input pixels seen by one output": int(conv_mask.sum())})
    ev.check("image pooling sees the whole map", bool(pool_mask.all()))
    ev.check("the degenerate 3x3 branch sees a single pixel", int(conv_mask.sum()) == 1)
    ev.headline = (f"mean valid fraction {frac[0]:.2f} at rate 1 -> "
                   f"{frac[rates.index(24)] if 24 in rates else frac[-1]:.2f} at 24; "
                   f"only the centre tap from rate {degenerate}; image pooling sees {int(pool_mask.sum()):,} px")
    ev.plots.append(segmentation.plot_aspp_degeneration(res, ctx.path("aspp_degeneration.png")).name)
    return ev


@tip(id="seg.skip-connections", title="Skip connections preserve detail",
     larger_runs=("docs/segmentation.md#c-u-net-with-and-without-skip-connections: the ISBI U-Net ablation",),
     claim="In a U-Net, skip connections from the encoder raise the accuracy on pixels next to object boundaries, "
           "where the upsampled coarse features alone lose detail.",
     cite=(README.at(41, 42, "lost boundaries, skip connections"), README.at(57, topic="skips keep spatial detail"),
           LECTURE.at(1614, 1617, "U-Net: skip connections keep resolution")),
     source="Ronneberger et al. 2015", section=SEG,
     exercises=(segmentation.skip_ablation, segmentation_models, isbi),
     quick={"base_channels": 8, "steps": 40, "batch_size": 2, "crop_size": 64},
     full={"base_channels": 16, "steps": 300, "batch_size": 4, "crop_size": 128}, budget_s=12,
     seeds={"quick": 3, "full": 5}, rule=Effect("boundary_accuracy", "with skips", "without skips", min_effect=0.01))
def skip_connections(ctx: Context) -> Evidence:
    """U-Net with vs without skips on ISBI 2012 via :func:`dltricks.experiments.segmentation.skip_ablation`."""
    options = {k: ctx[k] for k in ("base_channels", "steps", "batch_size", "crop_size", "lr") if k in ctx.settings}
    ev = Evidence(setup=f"U-Net with vs without skip connections on the ISBI 2012 membrane slices (25 train / 5 "
                        f"held-out), {options}; accuracy within 2 px of a true boundary vs elsewhere "
                        f"(dltricks.experiments.segmentation.skip_ablation).")
    last: dict[str, Any] = {}
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        last = segmentation.skip_ablation(seed=seed, amp=False, **options)
        for key, name in (("with_skips", "with skips"), ("without_skips", "without skips")):
            run = last["runs"][key]
            ev.add(name, **{m: run[m] for m in ("boundary_accuracy", "interior_accuracy", "boundary_f1", "dice")
                            if m in run})
    ev.budget = {"optimizer steps": options.get("steps"), "crops seen": options.get("steps", 0) *
                 options.get("batch_size", 4), "crop size (px)": options.get("crop_size")}
    ev.plots.append(segmentation.plot_skip_ablation(last, ctx.path("skips.png")).name)
    return ev


@tip(id="seg.pooling-invariance", title="Pooling's invariance hurts segmentation",
     larger_runs=("docs/segmentation.md#b-output-stride-vs-accuracy-and-compute: output strides 8-32 at larger scale",),
     claim="Downsampling by 32 (pooling/striding all the way) loses boundary detail: DeepLabV3 at output stride 8 "
           "segments membrane boundaries better than at output stride 32, for more compute. (Quick mode: a "
           "narrow ResNet-18 encoder, 90 steps on 64 px crops.)",
     cite=(README.at(55, 56, "pooling and segmentation"), README.at(113, topic="invariance not wanted in segmentation"),
           DILATED.at(1, topic="its lines 8-12 and 22-27: lost detail, output stride")),
     source="Chen et al., DeepLabV3 2017, Table 1", section=SEG,
     exercises=(segmentation.output_stride_tradeoff, segmentation_models, isbi),
     quick={"encoder": "resnet18", "encoder_kwargs": {"stem_width": 16, "stage_widths": [16, 32, 64, 128]},
            "steps": 90, "batch_size": 2, "crop_size": 64, "lr": 5e-3, "output_strides": [8, 32]},
     full={"encoder": "resnet18", "steps": 300, "batch_size": 4, "crop_size": 128, "output_strides": [8, 32]},
     budget_s=40, seeds={"quick": 3, "full": 5},
     rule=Effect("boundary_f1", "output stride 8", "output stride 32", min_effect=0.01))
def output_stride(ctx: Context) -> Evidence:
    """DeepLabV3 at output stride 8 vs 32 via :func:`dltricks.experiments.segmentation.output_stride_tradeoff`."""
    options = {k: ctx[k] for k in ("encoder", "encoder_kwargs", "steps", "batch_size", "crop_size", "lr")
               if k in ctx.settings}
    strides = tuple(ctx.get("output_strides", (8, 32)))
    ev = Evidence(setup=f"DeepLabV3 at output strides {strides} on ISBI 2012 (trained on random crops of the 25 "
                        f"training slices, boundary F1 on the 5 held-out whole slices), {options} "
                        f"(dltricks.experiments.segmentation.output_stride_tradeoff).")
    last: dict[str, Any] = {}
    for seed in ctx.seeds:
        ctx.report(f"seed {seed}")
        last = segmentation.output_stride_tradeoff(strides, seed=seed, amp=False, **options)
        for s in strides:
            run = last["runs"][str(s)]
            ev.add(f"output stride {s}", **{m: run[m] for m in ("boundary_f1", "dice", "macs_512") if m in run})
    ev.budget = {"optimizer steps": options.get("steps"), "crops seen": options.get("steps", 0) *
                 options.get("batch_size", 4), "crop size (px)": options.get("crop_size")}
    ev.plots.append(segmentation.plot_output_stride(last, ctx.path("output_stride.png")).name)
    return ev
