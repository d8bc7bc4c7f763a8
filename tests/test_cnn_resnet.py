"""ResNet family: blocks against a functional reference, the encoder contract (output stride, multi-grid,
feature list), zero-init, option-A shortcuts and drop path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks import create_model
from dltricks.models._registry import model_entrypoint
from dltricks.models.resnet import BasicBlock, Bottleneck, PadShortcut, ResNet, stage_strides_and_dilations


def test_basic_block_matches_functional_reference() -> None:
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    block = BasicBlock(8, 16, stride=2, downsample=downsample).eval()
    for bn in (block.bn1, block.bn2, downsample[1]):
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 9, 9)

    def bn(t: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1))
    h = bn(F.conv2d(h, block.conv2.weight, padding=1), block.bn2)
    shortcut = bn(F.conv2d(x, downsample[0].weight, stride=2), downsample[1])
    torch.testing.assert_close(block(x), F.relu(h + shortcut))


def test_torchvision_state_dict_names() -> None:
    keys = set(create_model("resnet50").state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.weight", "layer4.2.bn3.bias", "fc.weight", "fc.bias"):
        assert key in keys


@pytest.mark.parametrize("output_stride,strides", [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]),
                                                   (8, [2, 4, 8, 8, 8])])
@pytest.mark.parametrize("name,channels", [("resnet18", [64, 64, 128, 256, 512]),
                                           ("resnet50", [64, 256, 512, 1024, 2048])])
def test_feature_list_contract(name: str, channels: list[int], output_stride: int, strides: list[int]) -> None:
    torch.manual_seed(0)
    model = model_entrypoint(name)(num_classes=0, output_stride=output_stride).eval()
    assert model.feature_channels == channels
    assert model.feature_strides == strides
    assert model.output_stride == output_stride
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        features = model.forward_features_list(x)
    assert len(features) == 5
    for feature, c, s in zip(features, channels, strides):
        assert feature.shape == (1, c, -(-64 // s), -(-80 // s))  # ceil(H / stride)
    with torch.no_grad():
        torch.testing.assert_close(features[-1], model.forward_features(x))
        assert model(x).shape == (1, channels[-1])  # num_classes=0: pooled features


def test_dilated_model_shares_weights_with_plain_model() -> None:
    """Output stride changes strides and dilations, not parameters: weights load across."""
    plain = create_model("resnet50")
    dilated = create_model("resnet50", output_stride=8)
    dilated.load_state_dict(plain.state_dict())
    conv = dilated.layer4[0].conv2
    assert conv.stride == (1, 1) and conv.dilation == (2, 2)  # first block keeps the previous dilation
    assert dilated.layer4[1].conv2.dilation == (4, 4)
    assert dilated.layer3[0].conv2.dilation == (1, 1) and dilated.layer3[1].conv2.dilation == (2, 2)
    assert dilated.layer3[0].downsample[0].stride == (1, 1)


def test_multi_grid_rates() -> None:
    model = create_model("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    assert [model.layer4[j].conv2.dilation[0] for j in range(3)] == [2, 4, 8]
    with pytest.raises(ValueError, match="multi_grid"):
        create_model("resnet18", multi_grid=(1, 2, 4))


def test_invalid_output_stride() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        create_model("resnet18", output_stride=12)
    with pytest.raises(ValueError, match="output_stride"):
        create_model("resnet18", output_stride=64)
    assert stage_strides_and_dilations(4, [1, 2, 2, 2], 8) == ([1, 2, 1, 1], [1, 1, 2, 4], [4, 8, 8, 8])


def test_cifar_stem_and_strides() -> None:
    model = create_model("resnet18_cifar")
    assert model.feature_strides == [1, 1, 2, 4, 8]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    cifar20 = create_model("resnet20")
    assert cifar20.feature_channels == [16, 16, 32, 64] and cifar20.feature_strides == [1, 1, 2, 4]


def test_zero_init_residual_makes_blocks_start_as_identity_plus_relu() -> None:
    model = create_model("resnet50", zero_init_residual=True).eval()
    assert all(float(m.bn3.weight.detach().abs().sum()) == 0 for m in model.modules() if isinstance(m, Bottleneck))
    block = model.layer2[1]  # identity shortcut
    x = torch.randn(1, 512, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(x))
    basic = create_model("resnet18", zero_init_residual=True)
    assert float(basic.layer1[0].bn2.weight.detach().abs().sum()) == 0


def test_option_a_shortcut_is_parameter_free_subsample_and_pad() -> None:
    shortcut = PadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert float(y[:, 16:].abs().sum()) == 0
    model = create_model("resnet20")
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


def test_resnext_and_wide_inner_widths() -> None:
    resnext = create_model("resnext50_32x4d")
    assert resnext.layer1[0].conv2.groups == 32 and resnext.layer1[0].conv2.in_channels == 128
    wide = create_model("wide_resnet50_2")
    assert wide.layer1[0].conv2.in_channels == 128 and wide.layer1[0].conv3.out_channels == 256


def test_drop_path_rates_rise_linearly() -> None:
    model = ResNet("basic", (2, 2, 2, 2), drop_path_rate=0.7, num_classes=3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for stage in model.stages for b in stage]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.7)
    assert all(b > a for a, b in zip(rates, rates[1:]))


def test_attention_options_and_reset_classifier() -> None:
    model = create_model("resnet18", attn_layer="cbam", num_classes=5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    model.reset_classifier(3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="attn_layer"):
        create_model("resnet18", attn_layer="nonlocal")
