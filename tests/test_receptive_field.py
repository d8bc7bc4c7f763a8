"""Receptive fields: the traced (analytic) field equals the exact support of the input gradient.

Ground truth: :func:`gradient_support` - positive float64 weights and inputs, max pooling swapped for
average pooling, piecewise-flat activations for the identity - so an input pixel has a non-zero
gradient exactly when some path reaches the unit. Checked on the textbook laws (n stacked 3x3 convs:
2n + 1; one 3x3 with dilation d: 2d + 1; the size/jump/start recursion, as a property test over random
chains), on multi-path graphs (residual, concatenation, U-Net skips, attention, squeeze-excitation)
and on every registered image model.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from dltricks import create_model, list_models, model_info
from dltricks.measure.receptive_field import (DataDependentError, UntraceableError, conv_stack,
                                              effective_receptive_field, erf_growth, gradient_support, plot_erf,
                                              plot_erf_growth, receptive_field, support_box,
                                              theoretical_receptive_field, trace_receptive_fields)


def exact_box(model: nn.Module, size: tuple[int, int, int], layer: str = "", unit: dict | None = None):
    trace = trace_receptive_fields(model, size)
    rf = trace.output if layer == "" else trace.layers[layer]
    mask = gradient_support(model, size, layers=(layer,), units={layer: rf.unit})[layer]
    return rf, support_box(mask)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_stacked_3x3_convs_see_2n_plus_1(n: int) -> None:
    net = conv_stack(n, seed=0)
    rf, exact = exact_box(net, (1, 32, 32))
    assert rf.size == (2 * n + 1, 2 * n + 1)
    assert rf.box == exact
    assert rf.jump == (1.0, 1.0)
    theory = theoretical_receptive_field(net, (1, 32, 32), layer="")
    assert theory.size == (2 * n + 1, 2 * n + 1) and not theory.lower_bound


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_dilated_3x3_sees_2d_plus_1(d: int) -> None:
    net = conv_stack(1, dilation=d, seed=0)
    rf, exact = exact_box(net, (1, 32, 32))
    assert rf.size == (2 * d + 1, 2 * d + 1)
    assert rf.box == exact


def test_dilated_support_has_holes_but_same_extent() -> None:
    net = conv_stack(1, dilation=3, seed=0)
    rf = receptive_field(net, (1, 21, 21), layer="")
    mask = gradient_support(net, (1, 21, 21), units={"": rf.unit})[""]
    assert int(mask.sum()) == 9  # the nine taps only
    assert support_box(mask) == rf.box and rf.size == (7, 7)


# ---------------------------------------------------------------------------------------------
# Property test: random chains of convs and pools against the textbook recursion and the gradient.

layer_spec = st.tuples(st.sampled_from(["conv", "max", "avg"]), st.sampled_from([1, 2, 3, 5]),
                       st.sampled_from([1, 2]), st.sampled_from([1, 2, 3]), st.integers(0, 4))


def build_chain(spec) -> tuple[nn.Sequential, float, float]:
    """The chain and its textbook receptive field (size, start = centre of unit 0)."""
    layers: list[nn.Module] = []
    size, jump, start = 1.0, 1.0, 0.0
    for kind, k, s, d, p in spec:
        if kind != "conv":
            d = 1  # average pooling has no dilation; keep pools comparable
        p = min(p, (k - 1) * d // 2) if kind != "conv" else min(p, (k - 1) * d)
        if kind == "conv":
            layers.append(nn.Conv2d(2, 2, k, stride=s, padding=p, dilation=d))
        elif kind == "max":
            layers.append(nn.MaxPool2d(k, stride=s, padding=min(p, k // 2)))
            p = min(p, k // 2)
        else:
            layers.append(nn.AvgPool2d(k, stride=s, padding=min(p, k // 2)))
            p = min(p, k // 2)
        # size_l = size + (k-1) d jump;  start_l = start + ((k-1) d / 2 - p) jump;  jump_l = jump s
        size += (k - 1) * d * jump
        start += ((k - 1) * d / 2 - p) * jump
        jump *= s
    return nn.Sequential(nn.Conv2d(1, 2, 1), *layers), size, start


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(layer_spec, min_size=1, max_size=4), hw=st.integers(20, 48))
def test_chain_matches_recursion_and_gradient(spec, hw: int) -> None:
    net, size, start = build_chain(spec)
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 1, hw, hw))
    except RuntimeError:
        assume(False)
    assume(out.shape[-1] >= 1)
    rf, exact = exact_box(net, (1, hw, hw))
    assert rf.box == exact
    theory = theoretical_receptive_field(net, (1, hw, hw), layer="", max_size=1024)
    if not theory.lower_bound and theory.jump[0] is not None:
        assert theory.size[0] == size
        assert theory.start[0] == pytest.approx(start)


# ---------------------------------------------------------------------------------------------
# Multi-path graphs: the field is the union over paths.


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.skip = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        return torch.relu(self.branch(x) + self.skip(x))


class Inception(nn.Module):
    """Branches of different reach, concatenated: a channel sees only its own branch."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(1, 2, 1)
        self.b3 = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
        self.b7 = nn.Conv2d(1, 2, 7, padding=3)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b7(x), self.pool(x)], dim=1)


class TinyUNet(nn.Module):
    def __init__(self, up: str) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, 4, 3, padding=1)
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2),
                                  nn.Conv2d(4, 4, 3, padding=1))
        self.up_kind = up
        self.tconv = nn.ConvTranspose2d(4, 4, 4, stride=4)
        self.head = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        skip = self.enc(x)
        deep = self.down(skip)
        if self.up_kind == "transpose":
            deep = self.tconv(deep)
        else:
            deep = F.interpolate(deep, size=skip.shape[-2:], mode=self.up_kind,
                                 **({"align_corners": False} if self.up_kind in ("bilinear", "bicubic") else {}))
        return self.head(torch.cat([skip, deep], dim=1))


class SEBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))


class TinyAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, stride=4)
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, 8)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("make", [Residual, Inception, lambda: TinyUNet("nearest"), lambda: TinyUNet("bilinear"),
                                  lambda: TinyUNet("bicubic"), lambda: TinyUNet("transpose")],
                         ids=["residual", "inception", "unet-nearest", "unet-bilinear", "unet-bicubic",
                              "unet-transpose"])
def test_multi_path_graphs_match_gradient(make) -> None:
    torch.manual_seed(0)
    net = make()
    size = (1, 32, 32)
    trace = trace_receptive_fields(net, size)
    layers = [""] + [n for n in trace.order if trace.layers[n].unit][:4]
    units = {n: (trace.output if n == "" else trace.layers[n]).unit for n in layers}
    masks = gradient_support(net, size, layers=layers, units=units)
    for name in layers:
        rf = trace.output if name == "" else trace.layers[name]
        assert rf.box == support_box(masks[name]), name


class SliceWrites(nn.Module):
    """Writes into slices of a preallocated tensor (a hand-made concatenation) and then in place again."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 7, padding=3)

    def forward(self, x):
        out = x.new_zeros(x.shape[0], 4, *x.shape[2:])
        out[:, :2] = self.a(x)
        out[:, 2:] = self.b(x)
        out[:, :, :, :3] += 1.0
        return out.relu()


class Recurrence(nn.Module):
    """A scan along the width written column by column into a buffer: column t sees columns 0..t."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        out = torch.empty_like(y)
        h = torch.zeros_like(y[..., 0])
        for t in range(y.shape[-1]):
            h = 0.5 * h + y[..., t]
            out[..., t] = h
        return out


@pytest.mark.parametrize("make", [SliceWrites, Recurrence])
def test_in_place_writes_through_views(make) -> None:
    torch.manual_seed(0)
    net = make()
    rf, exact = exact_box(net, (1, 16, 16))
    assert rf.box == exact
    if make is Recurrence:
        assert rf.box == (7, 0, 9, 9)  # rows: the 3x3 conv; columns: everything up to the unit's column + 1


def test_residual_takes_the_longer_path() -> None:
    rf = receptive_field(Residual(), (1, 32, 32), layer="")
    assert rf.size == (5, 5)


def test_inception_channels_see_their_own_branch() -> None:
    # The unit is all channels at the centre: the union is the widest branch (7x7).
    assert receptive_field(Inception(), (1, 32, 32), layer="").size == (7, 7)


def test_global_operations_are_flagged() -> None:
    se = receptive_field(SEBlock(), (1, 24, 24), layer="")
    assert se.is_global and se.box == (0, 0, 23, 23)
    attn = trace_receptive_fields(TinyAttention(), (1, 32, 32))
    assert attn.output.is_global and attn.output.box == (0, 0, 31, 31)
    assert attn.layers["embed"].size == (4, 4) and not attn.layers["embed"].is_global
    masks = gradient_support(TinyAttention(), (1, 32, 32))
    assert bool(masks[""].all())


def test_data_dependent_ops_are_refused() -> None:
    class Unpool(nn.Module):
        def forward(self, x):
            y, idx = F.max_pool2d(x, 2, return_indices=True)
            return F.max_unpool2d(y, idx, 2)

    with pytest.raises(DataDependentError, match="max_unpool2d"):
        trace_receptive_fields(Unpool(), (1, 8, 8))


def test_unknown_op_names_itself() -> None:
    class Unfold(nn.Module):
        def forward(self, x):
            return F.unfold(x, 3)

    with pytest.raises(UntraceableError, match="im2col"):
        trace_receptive_fields(Unfold(), (1, 8, 8), device="cpu")


# ---------------------------------------------------------------------------------------------
# Every registered image model: analytic == exact, at a small input.

IMAGE_MODELS = [n for n in list_models() if model_info(n).task in ("classification", "segmentation")
                and len(model_info(n).test_input_size) == 3 and model_info(n).make_test_input is None]
# The float64 positive copy of a model this large costs more time and memory than CI allows; its blocks
# are the same as in the smaller members of its family, which are checked here. Its trace still runs.
GRADIENT_CHECK_MAX_PARAMS = 30_000_000


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_registered_model_rf_equals_gradient_support(name: str) -> None:
    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    size = tuple(info.test_input_size)
    trace = trace_receptive_fields(model, size)
    assert trace.output.box is not None
    spatial = [n for n in trace.order if trace.layers[n].unit and trace.layers[n].box is not None]
    if sum(p.numel() for p in model.parameters()) > GRADIENT_CHECK_MAX_PARAMS:
        pytest.skip(f"{name}: > {GRADIENT_CHECK_MAX_PARAMS:,} parameters; gradient check too costly for CI "
                    "(analytic trace ran)")
    step = max(1, len(spatial) // 3)
    layers = list(dict.fromkeys([""] + spatial[::step][:2] + spatial[-1:]))  # output, two early maps, the last
    units = {n: (trace.output if n == "" else trace.layers[n]).unit for n in layers}
    masks = gradient_support(model, size, layers=layers, units=units)
    for layer in layers:
        rf = trace.output if layer == "" else trace.layers[layer]
        assert rf.box == support_box(masks[layer]), f"{name} {layer or '(output)'}"
        if rf.is_global:
            assert bool(masks[layer].all()), f"{name} {layer}: flagged global but the gradient misses pixels"


@pytest.mark.parametrize("name,expected", [("resnet50", 427), ("resnet18", 435), ("mobilenet_v2", 491),
                                           ("vgg16", 212)])
def test_published_theoretical_fields(name: str, expected: int) -> None:
    """Textbook receptive fields of the last feature map (Araujo et al., Distill 2019 list resnet50 427 for the
    torchvision variant with the stride on the 3x3, vgg16 212, mobilenet_v2 491)."""
    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    model = create_model(name)
    trace = trace_receptive_fields(model, (3, 224, 224))
    layer = trace.feature_layer().layer
    theory = theoretical_receptive_field(model, (3, 224, 224), layer=layer, max_size=1024)
    assert theory.size == (expected, expected) and not theory.lower_bound


# ---------------------------------------------------------------------------------------------
# Effective receptive field (Luo et al. 2016).


def test_erf_grows_like_sqrt_depth(tmp_path) -> None:
    result = erf_growth((4, 8, 16, 32), channels=8, inits=2, samples=2, seed=0)
    assert result["analytic"] == [9, 17, 33, 65]
    assert all(b > a for a, b in zip(result["std"], result["std"][1:]))
    assert 0.35 <= result["exponent"] <= 0.65, result
    # The effective width is a small fraction of the analytic one, and the fraction shrinks with depth.
    ratios = [s / a for s, a in zip(result["std"], result["analytic"])]
    assert ratios[-1] < ratios[0]
    path = plot_erf_growth(result, tmp_path / "erf_growth.png")
    assert path.stat().st_size > 1000


def test_erf_heatmap_and_its_support(tmp_path) -> None:
    net = conv_stack(5, seed=0)
    erf = effective_receptive_field(net, (1, 31, 31), samples=2)
    support = erf.grad > 0
    rows, cols = support.any(1).nonzero()[0], support.any(0).nonzero()[0]
    # ReLU can only cut paths, so the effective support lies inside the analytic box.
    top, left, bottom, right = erf.analytic.box
    assert rows.min() >= top and rows.max() <= bottom and cols.min() >= left and cols.max() <= right
    assert math.isfinite(erf.std[0]) and 0 < erf.std[0] < erf.analytic.size[0]
    path = plot_erf(erf, tmp_path / "erf.png")
    assert path.stat().st_size > 1000
