"""ASPP has exactly DeepLabV3's structure, and computes what that structure says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks import create_model
from dltricks.layers.aspp import ASPP, ASPPPooling, aspp_rates


def _conv_bn_relu(module: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The (conv, bn) of a conv -> BN -> ReLU block, asserting that it is exactly that."""
    children = list(module.children())
    assert [type(c) for c in children] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU], [type(c) for c in children]
    return children[0], children[1]


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_structure(output_stride: int, rates: tuple[int, ...]) -> None:
    assert aspp_rates(output_stride) == rates
    aspp = ASPP(2048, output_stride=output_stride)
    assert aspp.rates == rates
    # 1x1 branch, three 3x3 atrous branches, image pooling: five branches.
    assert len(aspp.branches) == 5
    conv, bn = _conv_bn_relu(aspp.branches[0])
    assert (conv.kernel_size, conv.dilation, conv.in_channels, conv.out_channels) == ((1, 1), (1, 1), 2048, 256)
    assert bn.num_features == 256
    for branch, rate in zip(aspp.branches[1:4], rates):
        conv, bn = _conv_bn_relu(branch)
        assert conv.kernel_size == (3, 3)
        assert conv.dilation == (rate, rate) and conv.padding == (rate, rate)
        assert (conv.in_channels, conv.out_channels, bn.num_features) == (2048, 256, 256)
    pooling = aspp.branches[4]
    assert isinstance(pooling, ASPPPooling)
    assert isinstance(pooling.pool, nn.AdaptiveAvgPool2d) and pooling.pool.output_size in (1, (1, 1))
    conv, bn = _conv_bn_relu(pooling.conv)
    assert (conv.kernel_size, conv.in_channels, conv.out_channels) == ((1, 1), 2048, 256)
    # Concatenation of 5 x 256 channels, then a 1x1 projection to 256 with BN + ReLU.
    conv, bn = _conv_bn_relu(aspp.project)
    assert (conv.kernel_size, conv.in_channels, conv.out_channels, bn.num_features) == ((1, 1), 1280, 256, 256)


def test_aspp_parameter_count() -> None:
    c_in, c = 2048, 256
    aspp = ASPP(c_in, c)
    bn = 2 * c  # gamma and beta of each BN
    expected = (c_in * c + bn) + 3 * (9 * c_in * c + bn) + (c_in * c + bn) + (5 * c * c + bn)
    assert sum(p.numel() for p in aspp.parameters()) == expected


def test_aspp_forward_matches_reference() -> None:
    """Eval-mode output equals the five branches written with functional ops, concatenated and projected."""
    torch.manual_seed(0)
    aspp = ASPP(8, 4, rates=(1, 2, 3), drop_rate=0.0)
    for m in aspp.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    aspp.eval()
    x = torch.randn(2, 8, 9, 11)

    def cbr(block: nn.Module, inp: torch.Tensor, dilation: int = 1) -> torch.Tensor:
        conv, bn = _conv_bn_relu(block)
        y = F.conv2d(inp, conv.weight, None, padding=dilation * (conv.kernel_size[0] // 2), dilation=dilation)
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return F.relu(y)

    outs = [cbr(aspp.branches[0], x)]
    outs += [cbr(aspp.branches[i + 1], x, rate) for i, rate in enumerate((1, 2, 3))]
    pooled = cbr(aspp.branches[4].conv, x.mean(dim=(2, 3), keepdim=True))  # (B, 4, 1, 1)
    outs.append(pooled.expand(-1, -1, 9, 11))
    expected = cbr(aspp.project, torch.cat(outs, dim=1))
    with torch.no_grad():
        torch.testing.assert_close(aspp(x), expected)


def test_image_pooling_is_spatially_constant() -> None:
    pooling = ASPPPooling(3, 5).eval()
    with torch.no_grad():
        y = pooling(torch.randn(2, 3, 7, 6))
    assert y.shape == (2, 5, 7, 6)
    torch.testing.assert_close(y, y[..., :1, :1].expand_as(y))


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3plus_resnet50"])
@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_deeplab_uses_paper_aspp(name: str, output_stride: int, rates: tuple[int, ...]) -> None:
    model = create_model(name, num_classes=3, output_stride=output_stride)
    assert model.encoder.output_stride == output_stride
    assert model.decoder.aspp.rates == rates
    assert model.decoder.aspp.branches[0][0].in_channels == 2048


def test_bad_output_stride_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        aspp_rates(4)
