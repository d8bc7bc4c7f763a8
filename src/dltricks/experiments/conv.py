"""Convolution tips that are exact measurements: receptive fields, parameter counts, output sizes,
checkerboard patterns. Every number comes from building the layers and measuring them with
:mod:`dltricks.measure`:

* MACs: :func:`dltricks.measure.count_macs` (PyTorch's FLOP counter, FLOPs / 2);
* receptive field of the centre output unit: :func:`dltricks.measure.gradient_support`, the support of
  its input gradient through a copy of the network with positive weights (max-pooling traced as average
  pooling of the same window), so no path can cancel and a pixel has a non-zero gradient exactly when
  it lies in the receptive field.

Each experiment declares its tips with :func:`dltricks.evidence.tip`: the claim, the settings and the
verdict rule sit on the function that measures them.
"""

from __future__ import annotations

import torch
from torch import nn

from dltricks.evidence import DILATED, LECTURE, README, Context, Evidence, Exact, plots, tip
from dltricks.layers import conv as conv_layers
from dltricks.layers.conv import ConvBottleneck, FactorizedConv2d, SeparableConv2d
from dltricks.layers.spp import SpatialPyramidPooling
from dltricks.measure import count_macs, gradient_support, support_box
from dltricks.measure.gradients import input_gradient
from dltricks.measure.receptive_field import theoretical_receptive_field

__all__ = ["count_weights", "centre_support", "stacked_small_kernels", "padding_border", "downsampling_vs_dilation",
           "conv_savings", "checkerboard", "spp_fixed_length"]

CONV = "Convolutions"


def count_weights(module: nn.Module) -> int:
    """Weights of the convolutions and linear layers: parameters with more than one dimension (biases and
    norm scales are left out, as in the lecture's counts)."""
    return sum(p.numel() for p in module.parameters() if p.dim() > 1)


def centre_support(net: nn.Module, *, in_chans: int, size: int) -> tuple[int, torch.Tensor]:
    """(height of the receptive field, ``(size, size)`` mask of the input pixels in it) of the centre unit
    of ``net``'s output on a ``size x size`` input."""
    with torch.no_grad():
        out_h, out_w = net(torch.zeros(1, in_chans, size, size)).shape[-2:]  # (1, C', H', W')
    mask = gradient_support(net, (in_chans, size, size), units={"": {2: out_h // 2, 3: out_w // 2}})[""]
    box = support_box(mask)  # (top, left, bottom, right)
    return (0 if box is None else box[2] - box[0] + 1), mask


def _stack(channels: int, kernel: int, depth: int, *, stride: int = 1, dilations: tuple[int, ...] | None = None,
           pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        d = dilations[i] if dilations else 1
        pad = d * (kernel - 1) // 2
        layers += [nn.Conv2d(channels, channels, kernel, stride=stride, padding=pad, dilation=d, bias=False), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers[:-1] if not pool else layers)  # no trailing ReLU on plain stacks


@tip(id="conv.stacked-3x3", title="Stacked 3x3 = one large kernel",
     claim="Two stacked 3x3 convolutions see the same 5x5 receptive field as one 5x5 convolution, and three see "
           "7x7, with fewer weights and MACs.",
     cite=(README.at(21, 23, "receptive fields of stacked 3x3 layers"), README.at(30, 31, "fewer parameters"),
           LECTURE.at(495, 499, "VGG: uniform 3x3 filters")),
     source="Simonyan & Zisserman 2015, Sec. 2.3", section=CONV,
     exercises=(nn.Conv2d, gradient_support, theoretical_receptive_field, count_macs),
     quick={"channels": 64, "size": 32, "depths": [2, 3]}, full={"channels": 64, "size": 32, "depths": [2, 3, 4]},
     seeds={"quick": 1, "full": 1}, budget_s=1,
     metrics={"rf": "receptive field (px) from the input-gradient support", "weights": "conv weights",
              "MACs": "multiply-accumulates"},
     rule=Exact(checks=("same receptive field (2 stacked vs 5x5)", "fewer weights (2 stacked vs 5x5)",
                        "same receptive field (3 stacked vs 7x7)", "fewer weights (3 stacked vs 7x7)",
                        "fewer MACs (2 stacked vs 5x5)", "fewer MACs (3 stacked vs 7x7)")))
def stacked_small_kernels(ctx: Context) -> Evidence:
    """n stacked 3x3 convs vs one (2n+1)x(2n+1) conv: receptive field, weights and MACs."""
    channels, size = ctx.get("channels", 64), ctx.get("size", 32)
    small = ctx.get("small_kernel", 3)
    ev = Evidence(setup=f"{channels}->{channels} channel bias-free convs on a {size}x{size} input; receptive field "
                        f"= support of the centre unit's input gradient (positive weights).")
    masks = {}
    for depth in ctx.get("depths", (2, 3)):
        stack = _stack(channels, small, depth)
        big_k = depth * (small - 1) + 1
        big = nn.Conv2d(channels, channels, big_k, padding=big_k // 2, bias=False)
        rf_s, mask_s = centre_support(stack, in_chans=channels, size=size)
        rf_b, mask_b = centre_support(big, in_chans=channels, size=size)
        x = torch.randn(1, channels, size, size)
        w_s, w_b = count_weights(stack), count_weights(big)
        m_s, m_b = count_macs(stack, x), count_macs(big, x)
        ev.values[f"rf {depth}x{small}x{small}, analytic (dltricks.measure)"] = _analytic_rf(stack, channels, size)
        ev.values.update({f"rf {depth}x{small}x{small}": rf_s, f"rf {big_k}x{big_k}": rf_b,
                          f"weights {depth}x{small}x{small}": w_s, f"weights {big_k}x{big_k}": w_b,
                          f"weight ratio {depth}x{small}/{big_k}": round(w_s / w_b, 4),
                          f"MACs {depth}x{small}x{small}": m_s, f"MACs {big_k}x{big_k}": m_b})
        ev.check(f"same receptive field ({depth} stacked vs {big_k}x{big_k})", rf_s == rf_b)
        ev.check(f"fewer weights ({depth} stacked vs {big_k}x{big_k})", w_s < w_b)
        ev.check(f"fewer MACs ({depth} stacked vs {big_k}x{big_k})", m_s < m_b)
        masks[f"{depth} x {small}x{small} (RF {rf_s})"] = mask_s
        masks[f"{big_k}x{big_k} (RF {rf_b})"] = mask_b
    ev.plots.append(_mask_plot(ctx, "receptive_fields.png", masks, "input pixels reaching the centre output unit"))
    ev.headline = "; ".join(f"{d}x{small}x{small}: RF {ev.values[f'rf {d}x{small}x{small}']} with "
                            f"{ev.values[f'weight ratio {d}x{small}/{d * (small - 1) + 1}']:.0%} of the weights"
                            for d in ctx.get("depths", (2, 3)))
    return ev


def _analytic_rf(net: nn.Module, channels: int, size: int) -> int:
    """Receptive-field size from :func:`dltricks.measure.receptive_field.theoretical_receptive_field` (a graph
    trace of kernel, stride, dilation and padding), as a cross-check of the gradient support."""
    return int(theoretical_receptive_field(net, (channels, size, size), layer="").size[0])


def _mask_plot(ctx: Context, name: str, masks: dict[str, torch.Tensor], title: str) -> str:
    fig, axes = plots.plt.subplots(1, len(masks), figsize=(2.2 * len(masks), 2.5))
    for ax, (label, mask) in zip(axes, masks.items()):
        ax.imshow(mask.float().numpy(), cmap="Greys", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return plots.save(fig, ctx.path(name))


@tip(id="conv.padding", title="Padding keeps size and borders",
     claim="'Same' zero padding keeps the feature-map size through a conv stack and lets border pixels reach "
           "more output units; without it every 3x3 layer trims 2 pixels and the borders fade out.",
     cite=README.at(12, topic="padding keeps the size and the edges"), section=CONV,
     exercises=(nn.Conv2d, input_gradient),
     quick={"depth": 5, "size": 28}, full={"depth": 5, "size": 28}, seeds={"quick": 1, "full": 1}, budget_s=1,
     rule=Exact(checks=("padding keeps the spatial size", "no padding shrinks the map by 10 px",
                        "the corner pixel reaches more output units with padding",
                        "the corner pixel's share of the output gradient is larger with padding")))
def padding_border(ctx: Context) -> Evidence:
    """'Same' padding keeps the map size and lets border pixels reach more output units."""
    depth, size, channels = ctx.get("depth", 5), ctx.get("size", 28), ctx.get("channels", 8)
    ev = Evidence(setup=f"{depth} stacked 3x3 convs ({channels} channels, positive weights) on {size}x{size}, "
                        f"with padding {ctx.get('padding', 1)} vs none.")
    results = {}
    for label, pad in (("padded", ctx.get("padding", 1)), ("valid", 0)):
        net = nn.Sequential(*[nn.Conv2d(1 if i == 0 else channels, channels, 3, padding=pad, bias=False)
                              for i in range(depth)]).double()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(p.abs() + 0.01)
        x = torch.ones(1, 1, size, size, dtype=torch.float64)
        y = net(x)  # (1, C, H', W')
        # How many output positions does each input pixel reach? Count per pixel via one backward per
        # output would be slow; the gradient of the summed output weights pixels by path counts, so we
        # also count reached positions exactly with a binary propagation through the kernel footprint.
        reach = _reach_count(size, depth, pad)
        grad = input_gradient(net, x)[0, 0]  # (H, W): path-weighted reach of each pixel
        results[label] = {"out": y.shape[-1], "corner_reach": int(reach[0, 0]),
                          "centre_reach": int(reach[size // 2, size // 2]),
                          "corner_share": float(grad[0, 0] / grad[size // 2, size // 2])}
        ev.values.update({f"{label}: output size": y.shape[-1],
                          f"{label}: output units reached by the corner pixel": int(reach[0, 0]),
                          f"{label}: output units reached by the centre pixel": int(reach[size // 2, size // 2]),
                          f"{label}: corner/centre gradient share": round(results[label]["corner_share"], 6)})
    ev.headline = (f"{size}px -> {results['padded']['out']}px padded vs {results['valid']['out']}px valid; "
                   f"corner pixel reaches {results['padded']['corner_reach']} vs {results['valid']['corner_reach']} "
                   "output units")
    ev.check("padding keeps the spatial size", results["padded"]["out"] == size)
    ev.check(f"no padding shrinks the map by {2 * depth} px", results["valid"]["out"] == size - 2 * depth)
    ev.check("the corner pixel reaches more output units with padding",
             results["padded"]["corner_reach"] > results["valid"]["corner_reach"])
    ev.check("the corner pixel's share of the output gradient is larger with padding",
             results["padded"]["corner_share"] > results["valid"]["corner_share"])
    return ev


def _reach_count(size: int, depth: int, pad: int) -> torch.Tensor:
    """For each input pixel, the number of final output positions whose receptive field contains it."""
    counts = torch.zeros(size, size)
    eye = torch.eye(size * size).view(size * size, 1, size, size)  # one image per input pixel
    kernel = torch.ones(1, 1, 3, 3)
    x = eye
    for _ in range(depth):
        x = (torch.nn.functional.conv2d(x, kernel, padding=pad) > 0).float()
    counts = x.flatten(1).sum(1).view(size, size)
    return counts


@tip(id="conv.striding-pooling", title="Striding/pooling: bigger RF, less compute, less detail",
     claim="Striding or pooling enlarges the receptive field of a conv stack and cuts its compute, but the output "
           "loses spatial resolution.",
     cite=README.at(38, 42, "striding and pooling"), section=CONV,
     exercises=(nn.Conv2d, nn.MaxPool2d, gradient_support, theoretical_receptive_field, count_macs),
     quick={"depth": 4, "size": 64}, full={"depth": 4, "size": 64}, seeds={"quick": 1, "full": 1}, budget_s=1,
     rule=Exact(checks=("striding enlarges the receptive field", "pooling enlarges the receptive field",
                        "striding cuts compute", "striding loses resolution")))
@tip(id="conv.dilation", title="Dilation: bigger RF at full resolution",
     claim="Dilated (atrous) convolutions grow the receptive field as fast as striding without losing resolution.",
     cite=(README.at(52, 53, "atrous convolutions"),
           DILATED.at(1, topic="its lines 14-20: holes in the kernel grow the field without pooling or striding")),
     source="Yu & Koltun 2016", section=CONV,
     exercises=(nn.Conv2d, gradient_support, theoretical_receptive_field),
     quick={"depth": 4, "size": 64}, full={"depth": 4, "size": 64}, seeds={"quick": 1, "full": 1}, budget_s=1,
     rule=Exact(checks=("dilation enlarges the receptive field", "dilation keeps full resolution")))
def downsampling_vs_dilation(ctx: Context) -> Evidence:
    """Receptive field, output size and MACs of plain, strided, pooled and dilated 3x3 stacks."""
    depth, size, channels = ctx.get("depth", 4), ctx.get("size", 64), ctx.get("channels", 16)
    dil = tuple(2 ** i for i in range(depth))
    nets = {
        "plain 3x3": _stack(channels, 3, depth),
        "stride 2": _stack(channels, 3, depth, stride=2),
        "3x3 + max-pool 2": _stack(channels, 3, depth, pool=True),
        f"dilation {','.join(map(str, dil))}": _stack(channels, 3, depth, dilations=dil),
    }
    ev = Evidence(setup=f"{depth} 3x3 convs with {channels} channels on a {size}x{size} input; receptive field from "
                        f"the input-gradient support (max-pool measured as average pool of the same geometry).")
    rows = {}
    x = torch.randn(1, channels, size, size)
    masks = {}
    for label, net in nets.items():
        rf, mask = centre_support(net, in_chans=channels, size=size)
        with torch.no_grad():
            out = net(x).shape[-1]
        macs = count_macs(net, x)
        rows[label] = (rf, out, macs)
        masks[f"{label}\nRF {rf}, out {out}x{out}"] = mask
        ev.values.update({f"{label}: receptive field": rf, f"{label}: output size": out, f"{label}: MACs": macs})
        ev.values[f"{label}: receptive field, analytic (dltricks.measure)"] = _analytic_rf(net, channels, size)
    plain, strided, pooled, dilated = (rows[k] for k in nets)
    ev.headline = "RF / output size: " + ", ".join(f"{k} {v[0]} / {v[1]}" for k, v in rows.items())
    ev.check("striding enlarges the receptive field", strided[0] > plain[0])
    ev.check("pooling enlarges the receptive field", pooled[0] > plain[0])
    ev.check("striding cuts compute", strided[2] < plain[2])
    ev.check("striding loses resolution", strided[1] < size)
    ev.check("dilation enlarges the receptive field", dilated[0] > plain[0])
    ev.check("dilation keeps full resolution", dilated[1] == size)
    ev.plots.append(_mask_plot(ctx, "receptive_fields.png", masks, "receptive field of the centre output unit"))
    return ev


@tip(id="conv.bottleneck", title="Bottleneck and depthwise-separable savings",
     claim="A 1x1 bottleneck and depthwise-separable convolutions cut weights by the lecture's figures: 737,280 "
           "(two 3x3) -> 180,224 (bottleneck) -> 84,800 (depthwise separable) on a 64-channel input, and ten "
           "3x3 depthwise-separable filters on 3 channels have 57 weights.",
     cite=(LECTURE.at(700, 723, "bottleneck block: 737,280 vs 180,224 weights"),
           LECTURE.at(880, topic="ten depthwise-separable 3x3 filters: 57 weights"),
           LECTURE.at(883, 907, "depthwise-separable block: 84,800 weights")),
     source="He et al. 2016; Howard et al. 2017", section=CONV,
     exercises=(conv_layers,), seeds={"quick": 1, "full": 1}, budget_s=1,
     rule=Exact(checks=("two 3x3 convs has the lecture's 737,280 weights",
                        "1x1-3x3-1x1 bottleneck has the lecture's 180,224 weights",
                        "two depthwise-separable 3x3 has the lecture's 84,800 weights",
                        "ten DS 3x3 filters on 3 channels has the lecture's 57 weights",
                        "bottleneck saves weights over two 3x3",
                        "depthwise-separable saves weights over the bottleneck",
                        "ResNet bottleneck saves weights over two 3x3 at 256")))
@tip(id="conv.factorized", title="Factorized k x 1 + 1 x k convolutions",
     claim="Replacing a 7x7 convolution 64->256 (802,816 weights) by 1x7 then 7x1 (573,440) keeps the 7x7 "
           "receptive field with 29 % fewer weights and MACs.",
     cite=LECTURE.at(728, 745, "factorized convolution: 802,816 vs 573,440 weights"),
     source="Szegedy et al., Inception v3, 2016", section=CONV,
     exercises=(conv_layers,), seeds={"quick": 1, "full": 1}, budget_s=1,
     rule=Exact(checks=("7x7 conv has the lecture's 802,816 weights", "1x7 then 7x1 has the lecture's 573,440 weights",
                        "factorized 1x7+7x1 saves weights over 7x7", "savings carry over to MACs")))
def conv_savings(ctx: Context) -> Evidence:
    """The lecture's weight counts for bottleneck, depthwise-separable and factorized convolutions,
    measured on the blocks of :mod:`dltricks.layers.conv`."""
    c_in, c = ctx.get("in_chans", 64), ctx.get("width", 256)
    plain = nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 3, padding=1, bias=False))
    # The lecture's bottleneck: 1x1 64->256, 3x3 256->64, 1x1 64->256.
    bottleneck = nn.Sequential(nn.Conv2d(c_in, c, 1, bias=False), nn.Conv2d(c, c_in, 3, padding=1, bias=False),
                               nn.Conv2d(c_in, c, 1, bias=False))
    # ResNet's bottleneck at 256 channels (He et al. 2016, Fig. 5) vs two 3x3 convs at 256.
    resnet_bottleneck = ConvBottleneck(c, c, c // 4, norm_layer=None, act_layer=None)
    resnet_plain = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 3, padding=1, bias=False))
    separable = nn.Sequential(SeparableConv2d(c_in, c, 3), SeparableConv2d(c, c, 3))
    full7 = nn.Conv2d(c_in, c, 7, padding=3, bias=False)
    fact7 = FactorizedConv2d(c_in, c, 7)
    ten_ds = SeparableConv2d(3, 10, 3)
    counts = {"two 3x3 convs": count_weights(plain), "1x1-3x3-1x1 bottleneck": count_weights(bottleneck),
              "two depthwise-separable 3x3": count_weights(separable), "7x7 conv": count_weights(full7),
              "1x7 then 7x1": count_weights(fact7), "ten DS 3x3 filters on 3 channels": count_weights(ten_ds)}
    expected = ctx.get("lecture", {"two 3x3 convs": 737_280, "1x1-3x3-1x1 bottleneck": 180_224,
                                   "two depthwise-separable 3x3": 84_800, "7x7 conv": 802_816,
                                   "1x7 then 7x1": 573_440, "ten DS 3x3 filters on 3 channels": 57})
    size = ctx.get("size", 56)
    x = torch.randn(1, c_in, size, size)
    macs = {"two 3x3 convs": count_macs(plain, x), "1x1-3x3-1x1 bottleneck": count_macs(bottleneck, x),
            "two depthwise-separable 3x3": count_macs(separable, x), "7x7 conv": count_macs(full7, x),
            "1x7 then 7x1": count_macs(fact7, x)}
    ev = Evidence(setup=f"bias-free blocks from dltricks.layers.conv on a {c_in}-channel input (width {c}); "
                        f"MACs at {size}x{size} with torch.utils.flop_counter.")
    for name, n in counts.items():
        ev.values[f"weights: {name}"] = n
        ev.values[f"lecture figure: {name}"] = expected[name]
        ev.check(f"{name} has the lecture's {expected[name]:,} weights", n == expected[name])
    ev.values["weights: ResNet bottleneck 256-64-256 (dltricks.layers.conv.ConvBottleneck)"] = count_weights(
        resnet_bottleneck)
    ev.values["weights: two 3x3 convs at 256"] = count_weights(resnet_plain)
    ev.check("ResNet bottleneck saves weights over two 3x3 at 256",
             count_weights(resnet_bottleneck) < count_weights(resnet_plain))
    for name, m in macs.items():
        ev.values[f"MACs: {name}"] = m
    ev.check("bottleneck saves weights over two 3x3", counts["1x1-3x3-1x1 bottleneck"] < counts["two 3x3 convs"])
    ev.check("depthwise-separable saves weights over the bottleneck",
             counts["two depthwise-separable 3x3"] < counts["1x1-3x3-1x1 bottleneck"])
    ev.check("factorized 1x7+7x1 saves weights over 7x7", counts["1x7 then 7x1"] < counts["7x7 conv"])
    ev.check("savings carry over to MACs", macs["two depthwise-separable 3x3"] < macs["1x1-3x3-1x1 bottleneck"]
             < macs["two 3x3 convs"] and macs["1x7 then 7x1"] < macs["7x7 conv"])
    ev.headline = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    ev.plots.append(plots.bar_plot(ctx.path("weights.png"), {k: [v] for k, v in counts.items() if "ten" not in k},
                                   ylabel="weights", title="weights per block (64-channel input)", log=True))
    return ev


@tip(id="conv.transposed-checkerboard", title="Transposed-conv checkerboard",
     claim="A transposed convolution whose kernel is not divisible by its stride paints a checkerboard on a "
           "constant input; a divisible kernel overlaps evenly, and resize + convolution never does.",
     cite=LECTURE.at(1651, 1655, "upsampling notes: kernel a multiple of the stride, or resize"),
     source="Odena et al., Distill 2016", section=CONV,
     exercises=(nn.ConvTranspose2d,), seeds={"quick": 1, "full": 1},
     quick={"size": 16, "random_trials": 8, "uneven_kernel": 3, "even_kernel": 4, "stride": 2},
     full={"size": 32, "random_trials": 32, "uneven_kernel": 3, "even_kernel": 4, "stride": 2}, budget_s=1,
     rule=Exact(checks=("the uneven kernel gives a checkerboard", "the even kernel gives an even overlap",
                        "resize + conv gives no checkerboard for any weights")))
def checkerboard(ctx: Context) -> Evidence:
    """Transposed conv with kernel not divisible by stride vs divisible vs resize + conv, on a constant input."""
    size, stride = ctx.get("size", 16), ctx.get("stride", 2)
    k_bad, k_good = ctx.get("uneven_kernel", 3), ctx.get("even_kernel", 4)
    trials = ctx.get("random_trials", 8)
    x = torch.ones(1, 1, size, size)
    border = ctx.get("border", 3)

    def variation(y: torch.Tensor) -> float:
        inner = y[..., border:-border, border:-border]
        return float(inner.std() / inner.abs().mean().clamp_min(1e-12))

    def transposed(k: int, ones: bool) -> nn.ConvTranspose2d:
        pad = (k - stride + 1) // 2
        layer = nn.ConvTranspose2d(1, 1, k, stride=stride, padding=pad, output_padding=(k - stride) % 2, bias=False)
        if ones:
            nn.init.ones_(layer.weight)
        return layer

    def resize_conv(ones: bool) -> nn.Sequential:
        conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        if ones:
            nn.init.ones_(conv.weight)
        return nn.Sequential(nn.Upsample(scale_factor=stride, mode="nearest"), conv)

    maps = {}
    with torch.no_grad():
        y_bad = transposed(k_bad, True)(x)
        y_good = transposed(k_good, True)(x)
        y_rc = resize_conv(True)(x)
        maps = {f"transposed k{k_bad} s{stride}": y_bad[0, 0], f"transposed k{k_good} s{stride}": y_good[0, 0],
                "nearest x2 + conv 3x3": y_rc[0, 0]}
        rand = {"uneven": [], "even": [], "resize": []}
        for seed in range(trials):
            torch.manual_seed(seed)
            rand["uneven"].append(variation(transposed(k_bad, False)(x)))
            rand["even"].append(variation(transposed(k_good, False)(x)))
            rand["resize"].append(variation(resize_conv(False)(x)))
    v_bad, v_good, v_rc = variation(y_bad), variation(y_good), variation(y_rc)
    ev = Evidence(setup=f"constant {size}x{size} input upsampled x{stride}; variation = std/mean of the output "
                        f"interior (border {border} px cut); uniform weights isolate the overlap pattern, and "
                        f"{trials} random inits show what a network starts from.")
    ev.values.update({f"variation, transposed k{k_bad} (uniform weights)": v_bad,
                      f"variation, transposed k{k_good} (uniform weights)": v_good,
                      "variation, resize + conv (uniform weights)": v_rc,
                      f"mean variation, transposed k{k_bad} (random init)": sum(rand["uneven"]) / trials,
                      f"mean variation, transposed k{k_good} (random init)": sum(rand["even"]) / trials,
                      "mean variation, resize + conv (random init)": sum(rand["resize"]) / trials})
    ev.values.update({"uneven kernel": k_bad, "even kernel": k_good, "stride": stride})
    ev.headline = (f"interior variation: transposed k{k_bad} {v_bad:.3g}, transposed k{k_good} {v_good:.3g}, "
                   f"resize + conv {v_rc:.3g}")
    ev.check("the uneven kernel gives a checkerboard", v_bad > 0.05)
    ev.check("the even kernel gives an even overlap", v_good < 1e-6)
    ev.check("resize + conv gives no checkerboard for any weights", v_rc < 1e-6 and max(rand["resize"]) < 1e-5)
    fig, axes = plots.plt.subplots(1, 3, figsize=(7.5, 2.7))
    for ax, (label, m) in zip(axes, maps.items()):
        im = ax.imshow(m.numpy(), cmap="viridis")
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("constant input, uniform weights", fontsize=9)
    ev.plots.append(plots.save(fig, ctx.path("checkerboard.png")))
    ev.notes = ("A divisible kernel only removes the uneven overlap; with learned (random) weights its four output "
                "phases still differ, which is why resize + conv is the robust fix (Odena et al., Distill 2016).")
    return ev


@tip(id="conv.spp", title="Spatial pyramid pooling for any input size",
     claim="Spatial pyramid pooling pools a feature map over several grid sizes, the README's several scales, "
           "into one vector whose length does not depend on the input size, so one classifier serves every "
           "size. (The README's consequence, better detection of objects of different sizes, is not measured.)",
     cite=README.at(104, 105, "SPP layer"), source="He et al., SPP-net 2014", section=CONV,
     exercises=(SpatialPyramidPooling,),
     seeds={"quick": 1, "full": 1}, budget_s=1,
     rule=Exact(checks=("same output length for every input size", "output length = C x sum of bins^2")))
def spp_fixed_length(ctx: Context) -> Evidence:
    """Spatial pyramid pooling (:mod:`dltricks.layers.spp`) on inputs of several sizes."""
    levels = tuple(ctx.get("levels", (1, 2, 4)))
    channels = ctx.get("channels", 8)
    layer = SpatialPyramidPooling(levels)
    sizes = list(ctx.get("sizes", (7, 13, 24, 33, 64)))
    lengths = {}
    for s in sizes:
        with torch.no_grad():
            y = layer(torch.randn(2, channels, s, s + 3))  # (2, C * sum(bins^2))
        lengths[s] = tuple(y.shape)
    expected = channels * sum(n * n for n in levels)
    ev = Evidence(setup=f"SpatialPyramidPooling{levels} on a {channels}-channel map of sizes {sizes} "
                        "(width = size + 3)")
    ev.values.update({f"output shape at {s}x{s + 3}": str(v) for s, v in lengths.items()})
    ev.check("same output length for every input size", len(set(lengths.values())) == 1)
    ev.check("output length = C x sum of bins^2", all(v[-1] == expected for v in lengths.values()))
    ev.headline = f"output {next(iter(lengths.values()))} for inputs {sizes[0]}..{sizes[-1]} px"
    return ev
