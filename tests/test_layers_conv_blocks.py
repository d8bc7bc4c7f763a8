"""Attention gates, SPP, inverted residuals, two-pathway input, upsampling, norms and drop path vs references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError
from dltricks.layers.cbam import CBAM, ChannelAttention, SpatialAttention
from dltricks.layers.drop import DropPath, drop_path
from dltricks.layers.mbconv import FusedMBConv, MBConv
from dltricks.layers.multiscale import TwoPathwayBlock
from dltricks.layers.norm import LayerNorm2d, get_norm_layer, group_norm
from dltricks.layers.se import SqueezeExcite, make_divisible
from dltricks.layers.spp import SpatialPyramidPooling
from dltricks.layers.upsample import (MaxPoolWithIndices, MaxUnpool, ResizeConvUpsample, TransposedConvUpsample,
                                      checkerboard_score, make_upsample)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# Squeeze-and-excitation and CBAM against their equations.

def test_squeeze_excite_matches_equation() -> None:
    torch.manual_seed(0)
    se = SqueezeExcite(32, 1 / 8)
    x = torch.randn(2, 32, 5, 7)
    z = x.mean(dim=(2, 3))  # (B, C)
    w1, b1 = se.fc1.weight[:, :, 0, 0], se.fc1.bias
    w2, b2 = se.fc2.weight[:, :, 0, 0], se.fc2.bias
    s = torch.sigmoid(F.linear(F.relu(F.linear(z, w1, b1)), w2, b2))  # (B, C)
    torch.testing.assert_close(se(x), x * s[:, :, None, None])
    assert se.fc1.out_channels == 4
    assert SqueezeExcite(96, rd_channels=4).fc1.out_channels == 4


def test_make_divisible_rounding_rule() -> None:
    assert make_divisible(32 * 1.1) == 32  # 35.2 -> 32 (within 10 %)
    assert make_divisible(16 * 1.2) == 24  # 19.2 -> 16 would lose 17 %: bumped to 24
    assert make_divisible(1280 * 1.2) == 1536
    assert make_divisible(3) == 8


def test_cbam_matches_equations() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6)
    channel = ChannelAttention(16, 1 / 4)

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return F.linear(F.relu(F.linear(v, channel.fc1.weight[:, :, 0, 0])), channel.fc2.weight[:, :, 0, 0])

    gate_c = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))  # (B, C)
    torch.testing.assert_close(channel(x), x * gate_c[:, :, None, None])

    spatial = SpatialAttention(7, norm_layer=None)
    pooled = torch.stack([x.mean(1), x.amax(1)], dim=1)  # (B, 2, H, W)
    gate_s = torch.sigmoid(F.conv2d(pooled, spatial.conv.weight, spatial.conv.bias, padding=3))
    torch.testing.assert_close(spatial(x), x * gate_s)

    cbam = CBAM(16, 1 / 4).eval()
    torch.testing.assert_close(cbam(x), cbam.spatial(cbam.channel(x)))


# ---------------------------------------------------------------------------------------------------------
# Spatial pyramid pooling.

def spp_reference(x: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """Bins by explicit loops: rows floor(i*H/n) .. ceil((i+1)*H/n) - 1."""
    height, width = x.shape[-2:]
    out = []
    for n in levels:
        for i in range(n):
            for j in range(n):
                r0, r1 = (i * height) // n, -(-((i + 1) * height) // n)
                c0, c1 = (j * width) // n, -(-((j + 1) * width) // n)
                out.append(x[:, :, r0:r1, c0:c1].amax(dim=(2, 3)))  # (B, C)
    # Layout of the module: per level, channel-major (C, n, n) flattened.
    per_level, k = [], 0
    for n in levels:
        block = torch.stack(out[k:k + n * n], dim=-1)  # (B, C, n*n)
        per_level.append(block.flatten(1))
        k += n * n
    return torch.cat(per_level, dim=1)


@pytest.mark.parametrize("size", [(7, 7), (13, 9), (32, 20), (4, 5)])
def test_spp_fixed_length_from_any_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    spp = SpatialPyramidPooling((1, 2, 4))
    x = torch.randn(2, 3, *size)
    y = spp(x)
    assert y.shape == (2, spp.output_features(3)) == (2, 3 * 21)
    torch.testing.assert_close(y, spp_reference(x, (1, 2, 4)))


def test_spp_equals_paper_window_formula_on_13x13() -> None:
    """On the paper's 13x13 conv5 map, window ceil(a/n) with stride floor(a/n) gives the same bins."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 13, 13)
    levels = (1, 2, 3, 6)
    paper = [F.max_pool2d(x, math.ceil(13 / n), math.floor(13 / n)).flatten(1) for n in levels]
    torch.testing.assert_close(SpatialPyramidPooling(levels)(x), torch.cat(paper, dim=1))


def test_spp_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SpatialPyramidPooling((0, 2))
    with pytest.raises(ValueError):
        SpatialPyramidPooling(pool="median")


# ---------------------------------------------------------------------------------------------------------
# MBConv and Fused-MBConv.

def test_mbconv_structure_and_params() -> None:
    # EfficientNet-B0's first stride-2 block: 16 -> 24, expansion 6, 3x3, SE with 16 * 0.25 = 4 channels.
    block = MBConv(16, 24, kernel_size=3, stride=2, expand_ratio=6, se_ratio=0.25, act_layer="silu")
    mid = 96
    expected = (16 * mid + 2 * mid) + (9 * mid + 2 * mid) + (mid * 4 + 4 + 4 * mid + mid) + (mid * 24 + 2 * 24)
    assert n_params(block) == expected
    assert not block.has_residual
    assert block(torch.randn(2, 16, 9, 9)).shape == (2, 24, 5, 5)
    # The projection is linear (no activation), the expansion skipped for t = 1.
    assert not hasattr(block.conv_pwl, "act")
    assert isinstance(MBConv(16, 16, expand_ratio=1).conv_pw, nn.Identity)


def test_mbconv_zero_init_makes_identity() -> None:
    block = MBConv(24, 24, expand_ratio=4, drop_path=0.5)
    block.zero_init_last()
    block.eval()
    x = torch.randn(2, 24, 6, 6)
    torch.testing.assert_close(block(x), x)


def test_mbconv_drop_path_only_drops_the_branch() -> None:
    torch.manual_seed(0)
    block = MBConv(8, 8, expand_ratio=2, drop_path=0.5).train()
    x = torch.randn(64, 8, 4, 4)
    y = block(x)
    branch_zero = (y - x).flatten(1).abs().amax(dim=1) == 0
    assert 10 < int(branch_zero.sum()) < 54  # about half the samples keep only the shortcut


def test_fused_mbconv() -> None:
    single = FusedMBConv(24, 24, expand_ratio=1)
    assert n_params(single) == 9 * 24 * 24 + 2 * 24 and single.has_residual
    fused = FusedMBConv(24, 48, stride=2, expand_ratio=4)
    assert n_params(fused) == (9 * 24 * 96 + 2 * 96) + (96 * 48 + 2 * 48)
    assert fused(torch.randn(2, 24, 7, 7)).shape == (2, 48, 4, 4)


# ---------------------------------------------------------------------------------------------------------
# Two-pathway multi-scale input.

def input_support(module: nn.Module, in_chs: int, size: int) -> int:
    """Rows of the input that influence the centre output pixel (gradient support)."""
    x = torch.randn(1, in_chs, size, size, requires_grad=True)
    module(x)[0, :, size // 2, size // 2].sum().backward()
    rows = (x.grad[0].abs().sum(dim=(0, 2)) > 0).nonzero()
    return int(rows.max() - rows.min() + 1)


def test_two_pathway_sees_more_context_than_full_pathway() -> None:
    torch.manual_seed(0)
    block = TwoPathwayBlock(3, 8, scale_factor=3, depth=2).eval()
    full_only = input_support(block.full, 3, 41)
    both = input_support(block, 3, 41)
    assert full_only == 5  # two 3x3 convs
    assert both >= 3 * 5  # the low-resolution pathway covers about s * (2 * depth + 1) pixels


@pytest.mark.parametrize("fuse", ["concat", "sum"])
def test_two_pathway_odd_sizes(fuse: str) -> None:
    block = TwoPathwayBlock(3, 8, fuse=fuse)
    assert block(torch.randn(2, 3, 17, 22)).shape == (2, 8, 17, 22)


# ---------------------------------------------------------------------------------------------------------
# Upsampling.

def transposed_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                              padding: int, output_padding: int) -> torch.Tensor:
    """Zero insertion between inputs, full padding, and a plain conv with the flipped, transposed kernel."""
    batch, c_in, height, width = x.shape
    k = weight.shape[-1]
    up = x.new_zeros(batch, c_in, (height - 1) * stride + 1, (width - 1) * stride + 1)
    up[:, :, ::stride, ::stride] = x
    pad = k - 1 - padding
    up = F.pad(up, (pad, pad + output_padding, pad, pad + output_padding))
    kernel = weight.flip(-1, -2).transpose(0, 1)  # (C_out, C_in, k, k)
    return F.conv2d(up, kernel, bias)


@pytest.mark.parametrize("kernel_size", [2, 3, 4])
def test_transposed_conv_equals_zero_insertion_conv(kernel_size: int) -> None:
    torch.manual_seed(0)
    up = TransposedConvUpsample(3, 5, 2, kernel_size=kernel_size)
    x = torch.randn(2, 3, 6, 7)
    y = up(x)
    assert y.shape == (2, 5, 12, 14)
    conv = up.conv
    expected = transposed_conv_reference(x, conv.weight, conv.bias, 2, conv.padding[0], conv.output_padding[0])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_upsample_output_size_for_odd_skips() -> None:
    x = torch.randn(1, 4, 8, 8)
    for mode in ("transposed", "bilinear", "nearest"):
        up = make_upsample(mode, 4, 2)
        assert up(x).shape == (1, 2, 16, 16)
        assert up(x, output_size=(17, 16)).shape == (1, 2, 17, 16)
    with pytest.raises(ValueError, match="choose from"):
        make_upsample("pixelshuffle", 4, 2)


def test_max_unpool_restores_values_at_argmax_positions() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8)
    pooled, indices = MaxPoolWithIndices(2)(x)
    restored = MaxUnpool(3)(pooled, indices, output_size=(9, 8))
    expected = torch.zeros_like(x).flatten(2)
    expected.scatter_(2, indices.flatten(2), pooled.flatten(2))  # reference: scatter into flat positions
    torch.testing.assert_close(restored, expected.view_as(x))
    # Every kept value is the max of its 2x2 window and sits where it was.
    kept = restored != 0
    torch.testing.assert_close(restored[kept], x[kept])
    with pytest.raises(ValueError, match="indices"):
        MaxUnpool(3)(pooled)
    projected = make_upsample("unpool", 6, 3)
    assert projected(torch.randn(2, 6, 4, 4), indices=indices, output_size=(9, 8)).shape == (2, 3, 9, 8)


def test_checkerboard_from_uneven_overlap_only() -> None:
    x = torch.ones(1, 1, 16, 16)
    overlapping = TransposedConvUpsample(1, 1, 2, kernel_size=3, bias=False)
    even = TransposedConvUpsample(1, 1, 2, kernel_size=4, bias=False)
    resize = ResizeConvUpsample(1, 1, 2, mode="nearest", bias=False)
    for m in (overlapping, even, resize):
        nn.init.constant_(m.conv.weight, 1.0)
    assert checkerboard_score(overlapping(x)) > 0.3  # pixels get 1, 2 or 4 taps
    assert checkerboard_score(even(x)) < 1e-6  # k divisible by s: every pixel gets 4 taps
    assert checkerboard_score(resize(x)) < 1e-6


# ---------------------------------------------------------------------------------------------------------
# Norms by name and drop path.

def test_layer_norm_2d_matches_layer_norm_over_channels() -> None:
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 4, 5)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)


def test_norms_by_name() -> None:
    x = torch.randn(4, 64, 3, 3)
    for name, cls in [("batch", nn.BatchNorm2d), ("layer", LayerNorm2d), ("instance", nn.InstanceNorm2d),
                      ("group", nn.GroupNorm)]:
        layer = get_norm_layer(name)(64)
        assert isinstance(layer, cls)
        assert layer(x).shape == x.shape
    assert group_norm(48).num_groups == 16  # gcd(48, 32)
    with pytest.raises(ConfigError, match="batch"):
        get_norm_layer("bacth")


def test_drop_path_expectation_and_eval_identity() -> None:
    torch.manual_seed(0)
    x = torch.ones(20000, 3)
    y = drop_path(x, 0.25, training=True)
    per_sample = y[:, 0]
    kept = per_sample != 0
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert (y == y[:, :1]).all()  # one draw per sample
    assert abs(float(y.mean()) - 1.0) < 0.02  # unbiased: E[y] = x
    torch.testing.assert_close(DropPath(0.25).eval()(x), x)
    with pytest.raises(ValueError):
        DropPath(1.0)
