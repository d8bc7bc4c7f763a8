"""Convolution blocks against references: dense equivalents, per-group loops and the lecture's numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dltricks.errors import ConfigError
from dltricks.layers.activations import get_act_layer
from dltricks.layers.conv import (ChannelShuffle, ConvBottleneck, ConvNormAct, FactorizedConv2d, SeparableConv2d,
                                  effective_kernel_size, get_padding)


def n_weights(module: nn.Module) -> int:
    """Conv weights only (no biases, no norm parameters): the quantity the lecture counts."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# The lecture's worked numbers (W x H x 64 input, no biases).

def test_lecture_two_plain_3x3_convs() -> None:
    plain = nn.Sequential(ConvNormAct(64, 256, 3, norm_layer=None, bias=False),
                          ConvNormAct(256, 256, 3, norm_layer=None, bias=False))
    assert n_params(plain) == 737_280


def test_lecture_bottleneck_1x1_3x3_1x1() -> None:
    bottleneck = nn.Sequential(ConvNormAct(64, 256, 1, norm_layer=None, bias=False),
                               ConvNormAct(256, 64, 3, norm_layer=None, bias=False),
                               ConvNormAct(64, 256, 1, norm_layer=None, bias=False))
    assert n_params(bottleneck) == 180_224


def test_lecture_depthwise_separable_version() -> None:
    separable = nn.Sequential(SeparableConv2d(64, 256, 3), SeparableConv2d(256, 256, 3))
    assert n_params(separable) == 84_800


def test_lecture_factorized_7x7() -> None:
    full = ConvNormAct(64, 256, 7, norm_layer=None, bias=False)
    factorized = FactorizedConv2d(64, 256, 7)
    assert n_params(full) == 802_816
    assert n_params(factorized) == 573_440
    x = torch.randn(1, 64, 15, 15)
    assert factorized(x).shape == full(x).shape == (1, 256, 15, 15)


def test_lecture_ten_separable_filters_on_three_channels() -> None:
    assert n_params(SeparableConv2d(3, 10, 3)) == 57


def test_resnet_bottleneck_vs_two_3x3_at_256_channels() -> None:
    """He et al. 2016 Fig. 5: the 256-d bottleneck costs about as much as a 64-d basic block."""
    assert n_weights(ConvBottleneck(256, 256, 64)) == 69_632
    two_3x3 = nn.Sequential(ConvNormAct(256, 256, 3), ConvNormAct(256, 256, 3))
    assert n_weights(two_3x3) == 1_179_648


# ---------------------------------------------------------------------------------------------------------
# ConvNormAct.

def test_conv_norm_act_orders_and_bias() -> None:
    cna = ConvNormAct(4, 8, 3)
    assert list(dict(cna.named_children())) == ["conv", "norm", "act"]
    assert cna.conv.bias is None and cna.norm.num_features == 8
    nac = ConvNormAct(4, 8, 3, order="nac")
    assert list(dict(nac.named_children())) == ["norm", "act", "conv"] and nac.norm.num_features == 4
    can = ConvNormAct(4, 8, 3, order="can")
    assert can.conv.bias is not None  # the activation sits between conv and norm
    plain = ConvNormAct(4, 8, 3, norm_layer=None, act_layer=None)
    assert list(dict(plain.named_children())) == ["conv"] and plain.conv.bias is not None
    with pytest.raises(ValueError, match="order"):
        ConvNormAct(4, 8, order="acn")


@pytest.mark.parametrize("kernel_size,stride,dilation",
                         [(3, 1, 1), (3, 2, 1), (5, 1, 2), (7, 2, 1), (3, 1, 4), (1, 2, 1)])
def test_get_padding_gives_ceil_h_over_s(kernel_size: int, stride: int, dilation: int) -> None:
    conv = ConvNormAct(2, 2, kernel_size, stride=stride, dilation=dilation, norm_layer=None, act_layer=None)
    for size in (15, 16):
        out = conv(torch.randn(1, 2, size, size))
        assert out.shape[-1] == -(-size // stride)
    assert get_padding(kernel_size, 1, dilation) * 2 + 1 == effective_kernel_size(kernel_size, dilation)


def test_norm_and_act_by_name() -> None:
    for norm in ("batch", "layer", "instance", "group", "none"):
        block = ConvNormAct(8, 32, norm_layer=norm, act_layer="silu")
        assert block(torch.randn(2, 8, 5, 5)).shape == (2, 32, 5, 5)
    with pytest.raises(ConfigError, match="relu"):
        get_act_layer("rellu")


# ---------------------------------------------------------------------------------------------------------
# Dilated, separable, factorized and grouped convolutions against dense references.

def dilate_kernel(weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Insert dilation - 1 zeros between the taps of a (C_out, C_in, k, k) kernel."""
    c_out, c_in, k, _ = weight.shape
    size = effective_kernel_size(k, dilation)
    dense = weight.new_zeros(c_out, c_in, size, size)
    dense[:, :, ::dilation, ::dilation] = weight
    return dense


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_dilated_conv_equals_dense_conv_with_zero_inserted_kernel(dilation: int) -> None:
    torch.manual_seed(0)
    conv = ConvNormAct(3, 5, 3, dilation=dilation, norm_layer=None, act_layer=None)
    x = torch.randn(2, 3, 17, 13)
    dense = dilate_kernel(conv.conv.weight, dilation)
    expected = F.conv2d(x, dense, conv.conv.bias, padding=dense.shape[-1] // 2)
    out = conv(x)
    assert out.shape == (2, 5, 17, 13)  # "same" padding keeps the resolution
    torch.testing.assert_close(out, expected)


def test_separable_conv_equals_rank_one_dense_conv() -> None:
    torch.manual_seed(0)
    sep = SeparableConv2d(4, 6, 3, stride=2)
    x = torch.randn(2, 4, 11, 11)
    depthwise = sep.conv_dw.weight[:, 0]  # (C_in, k, k)
    pointwise = sep.conv_pw.weight[:, :, 0, 0]  # (C_out, C_in)
    dense = pointwise[:, :, None, None] * depthwise[None]  # (C_out, C_in, k, k): W[o, i] = P[o, i] * D[i]
    torch.testing.assert_close(sep(x), F.conv2d(x, dense, stride=2, padding=1))


def test_separable_conv_channel_multiplier_and_mobilenet_v1_form() -> None:
    sep = SeparableConv2d(8, 16, 3, channel_multiplier=2)
    assert n_params(sep) == 9 * 16 + 16 * 16
    v1 = SeparableConv2d(8, 16, 3, norm_layer="batch", act_layer="relu", dw_norm_act=True)
    assert isinstance(v1.norm_dw, nn.BatchNorm2d) and isinstance(v1.act, nn.ReLU)
    assert v1(torch.randn(2, 8, 6, 6)).shape == (2, 16, 6, 6)


def test_factorized_conv_equals_low_rank_dense_conv() -> None:
    torch.manual_seed(0)
    k = 5
    fac = FactorizedConv2d(3, 4, k, mid_chs=2)
    x = torch.randn(2, 3, 9, 12)
    horizontal = fac.conv_1xk.weight[:, :, 0, :]  # (C_mid, C_in, k): taps along width
    vertical = fac.conv_kx1.weight[:, :, :, 0]  # (C_out, C_mid, k): taps along height
    dense = torch.einsum("oma,mib->oiab", vertical, horizontal)  # (C_out, C_in, k, k), rank <= C_mid
    torch.testing.assert_close(fac(x), F.conv2d(x, dense, padding=k // 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_conv_equals_independent_convs_per_group(groups: int) -> None:
    torch.manual_seed(0)
    conv = ConvNormAct(8, 12, 3, groups=groups, norm_layer=None, act_layer=None)
    x = torch.randn(2, 8, 7, 7)
    w, b = conv.conv.weight, conv.conv.bias
    cin, cout = 8 // groups, 12 // groups
    pieces = [F.conv2d(x[:, g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout], b[g * cout:(g + 1) * cout], padding=1)
              for g in range(groups)]
    torch.testing.assert_close(conv(x), torch.cat(pieces, dim=1))
    assert conv.conv.weight.numel() == 3 * 3 * 8 * 12 // groups


def test_channel_shuffle_permutation() -> None:
    groups, per_group = 3, 4
    x = torch.arange(groups * per_group, dtype=torch.float32).view(1, -1, 1, 1).expand(2, -1, 2, 2)
    y = ChannelShuffle(groups)(x)
    expected = [g * per_group + j for j in range(per_group) for g in range(groups)]
    assert y[0, :, 0, 0].tolist() == expected
    # Shuffling with C/g groups undoes it.
    torch.testing.assert_close(ChannelShuffle(per_group)(y), x)
    with pytest.raises(ValueError, match="divisible"):
        ChannelShuffle(5)(x)


def test_conv_bottleneck_shapes() -> None:
    block = ConvBottleneck(32, 64, 16, stride=2, groups=4, last_act=False)
    assert block(torch.randn(2, 32, 9, 9)).shape == (2, 64, 5, 5)
    assert not hasattr(block.expand, "act")


# ---------------------------------------------------------------------------------------------------------
# Receptive field law for stacks of dilated convs: 1 + sum_i d_i (k_i - 1), measured by gradients.

@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 3, 5]), st.integers(1, 3)), min_size=1, max_size=4))
def test_receptive_field_of_dilated_stack(layers: list[tuple[int, int]]) -> None:
    stack = nn.Sequential(*[ConvNormAct(1, 1, k, dilation=d, norm_layer=None, act_layer=None, bias=False)
                            for k, d in layers])
    for m in stack.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0)  # positive taps: no accidental cancellation
    expected = 1 + sum(d * (k - 1) for k, d in layers)
    size = expected + 8
    x = torch.zeros(1, 1, size, size, requires_grad=True)
    stack(x)[0, 0, size // 2, size // 2].backward()
    rows = (x.grad[0, 0].abs().sum(dim=1) > 0).nonzero()
    assert int(rows.max() - rows.min() + 1) == expected


def test_init_cnn_follows_he_et_al():
    from dltricks.layers.init import init_cnn_

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 256, 3, bias=True), nn.BatchNorm2d(256), nn.Flatten(), nn.Linear(256, 500))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
    init_cnn_(net)
    fan_out = 256 * 3 * 3
    assert abs(net[0].weight.std().item() / (2.0 / fan_out) ** 0.5 - 1) < 0.02
    assert net[0].bias.abs().max() == 0 and torch.all(net[1].weight == 1)
    assert abs(net[3].weight.std().item() / 0.01 - 1) < 0.02
    init_cnn_(net, mode="fan_in", linear="uniform_fan_out")
    assert abs(net[0].weight.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) < 0.02
    assert net[3].weight.abs().max() <= 1 / 500 ** 0.5
    with pytest.raises(ValueError, match="fan_in"):
        init_cnn_(net, mode="fan_avg")
