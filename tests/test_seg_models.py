"""Segmentation models: the encoder contract, output sizes (odd ones too), U-Net options, decoders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dltricks import create_model, list_models
from dltricks.models.segmentation import ResNetEncoder, SegmentationModel
from dltricks.models.segmentation.deeplab import DeepLabV3Plus
from dltricks.models.segmentation.unet import UNet, UNetEncoder, pad_to

SEG_MODELS = list_models(task="segmentation")


def test_all_families_registered() -> None:
    for name in ("unet", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3plus_resnet50", "fpn_resnet18"):
        assert name in SEG_MODELS


# --- encoder contract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, channels", [("resnet18", [64, 64, 128, 256, 512]),
                                            ("resnet50", [64, 256, 512, 1024, 2048])])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet_encoder_contract(name: str, channels: list[int], output_stride: int) -> None:
    torch.manual_seed(0)
    encoder = ResNetEncoder(name, in_chans=2, output_stride=output_stride).eval()
    expected_strides = [2, 4, min(8, output_stride), min(16, output_stride), output_stride]
    assert encoder.feature_channels == channels
    assert encoder.feature_strides == expected_strides
    assert encoder.output_stride == output_stride
    for h, w in ((64, 64), (65, 67)):
        with torch.no_grad():
            features = encoder(torch.randn(1, 2, h, w))
        assert len(features) == len(channels)
        for f, c, s in zip(features, channels, expected_strides):
            assert f.shape == (1, c, math.ceil(h / s), math.ceil(w / s)), (f.shape, c, s)


def test_resnet_encoder_multi_grid_dilations() -> None:
    encoder = ResNetEncoder("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    dilations = [block.conv2.dilation[0] for block in encoder.backbone.layer4]
    assert dilations == [2, 4, 8]  # rate 2 at OS16 times the unit rates (DeepLabV3 Sec. 3.2)


@pytest.mark.parametrize("depth", [2, 4])
def test_unet_encoder_contract(depth: int) -> None:
    widths = [4 * 2 ** i for i in range(depth + 1)]
    encoder = UNetEncoder(1, widths, return_indices=True)
    assert encoder.feature_strides == [2 ** i for i in range(depth + 1)]
    features = encoder(torch.randn(2, 1, 37, 40))
    assert [f.shape[1] for f in features] == widths
    size = (37, 40)
    for f in features:
        assert f.shape[-2:] == size
        size = (size[0] // 2, size[1] // 2)  # 2x2 max-pooling floors
    assert features.indices is not None and len(features.indices) == depth


# --- every model: output size ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEG_MODELS)
def test_output_has_input_size_for_odd_sizes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        y = model(torch.randn(1, model.in_chans, 65, 67))
    assert y.shape == (1, 3, 65, 67)
    assert isinstance(model, SegmentationModel)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_deeplabv3plus_output_size_at_every_output_stride(output_stride: int) -> None:
    model = DeepLabV3Plus(encoder="resnet18", num_classes=2, in_chans=1, output_stride=output_stride,
                          multi_grid=None).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 33, 47)).shape == (1, 2, 33, 47)


# --- U-Net ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("upsample", ["transposed", "bilinear", "nearest", "unpool"])
@pytest.mark.parametrize("size", [(16, 16), (33, 50), (65, 67)])
def test_unet_upsample_modes_and_odd_sizes(upsample: str, size: tuple[int, int]) -> None:
    model = UNet(num_classes=2, in_chans=1, base_channels=4, upsample=upsample)
    y = model(torch.randn(2, 1, *size))
    assert y.shape == (2, 2, *size)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_paper_shape() -> None:
    model = create_model("unet")
    assert model.encoder.feature_channels == [64, 128, 256, 512, 1024]
    ups = [block.up.conv for block in model.decoder.blocks]
    assert all(isinstance(u, nn.ConvTranspose2d) and u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    # Without BN the layers are exactly the paper's: count them by formula.
    w = [64, 128, 256, 512, 1024]
    conv3 = lambda cin, cout: 9 * cin * cout + cout  # noqa: E731
    expected = conv3(1, 64) + conv3(64, 64) + sum(conv3(w[i - 1], w[i]) + conv3(w[i], w[i]) for i in range(1, 5))
    expected += sum(4 * w[i + 1] * w[i] + w[i] + conv3(2 * w[i], w[i]) + conv3(w[i], w[i]) for i in range(4))
    expected += 64 * 2 + 2  # 1x1 classifier, 2 classes
    with torch.device("meta"):
        paper = create_model("unet", num_classes=2, norm_layer="none")
    assert sum(p.numel() for p in paper.parameters()) == expected == 31_030_658


def test_unet_without_skips_ignores_encoder_detail() -> None:
    """Without skips the output depends on the input only through the deepest map."""
    torch.manual_seed(0)
    model = UNet(num_classes=1, in_chans=1, base_channels=4, depth=2, skip=False).eval()
    blocks = model.decoder.blocks
    assert all(block.conv[0].conv.in_channels == block.conv[1].conv.out_channels for block in blocks)
    # Perturb the stride-1 encoder map: with skips the output changes, without it does not.
    features = model.encoder(torch.randn(1, 1, 16, 16))
    base = model.decoder(features)
    features[0] = features[0] + 1.0
    torch.testing.assert_close(model.decoder(features), base)
    with_skips = UNet(num_classes=1, in_chans=1, base_channels=4, depth=2).eval()
    features = with_skips.encoder(torch.randn(1, 1, 16, 16))
    base = with_skips.decoder(features)
    features[0] = features[0] + 1.0
    assert not torch.allclose(with_skips.decoder(features), base)


def test_unet_too_small_input_names_the_minimum() -> None:
    model = create_model("unet_small").eval()
    with pytest.raises(ValueError, match="16"):
        model(torch.randn(1, 1, 8, 8))


def test_pad_to_replicates_last_row_and_column() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)
    y = pad_to(x, (3, 4))
    torch.testing.assert_close(y[..., :2, :3], x)
    torch.testing.assert_close(y[..., 2, :3], x[..., 1, :])
    torch.testing.assert_close(y[..., :2, 3], x[..., :, 2])
    with pytest.raises(ValueError):
        pad_to(x, (1, 3))


def test_unpool_puts_values_back_at_argmax_positions() -> None:
    """The unpool decoder block writes the (1x1-mapped) deep values exactly where the encoder's maxima were."""
    model = UNet(num_classes=1, in_chans=1, base_channels=2, depth=1, upsample="unpool")
    block = model.decoder.blocks[0]
    features = model.encoder(torch.randn(1, 1, 6, 6))
    sparse = block.up(features[1], indices=features.indices[0], output_size=(6, 6))  # (1, 2, 6, 6)
    nonzero_per_window = (sparse != 0).view(1, 2, 3, 2, 3, 2).sum(dim=(3, 5))
    assert (nonzero_per_window <= 1).all()
    mask = torch.zeros_like(sparse).flatten(2)
    mask.scatter_(2, features.indices[0].flatten(2), 1.0)
    assert ((sparse != 0).float().flatten(2) <= mask).all()


# --- DeepLabV3+ and FPN --------------------------------------------------------------------------------------


def test_deeplabv3plus_fuses_stride4_features() -> None:
    model = create_model("deeplabv3plus_resnet50", num_classes=2)
    decoder = model.decoder
    assert model.encoder.feature_strides[decoder.low_index] == 4
    assert decoder.reduce.conv.in_channels == 256 and decoder.reduce.conv.out_channels == 48
    assert decoder.fuse[0].conv.in_channels == 256 + 48
    features = model.encoder(torch.randn(2, 3, 64, 64))
    assert decoder(features).shape == (2, 256, 16, 16)  # stride 4


def test_fpn_pyramid_and_dilated_encoder() -> None:
    model = create_model("fpn_resnet18", num_classes=2).eval()
    features = model.encoder(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        assert model.decoder(features).shape == (1, 128, 16, 16)  # summed at stride 4
    assert len(model.decoder.lateral) == 4  # C2..C5
    dilated = create_model("fpn_resnet18", num_classes=2, output_stride=16).eval()
    with torch.no_grad():
        assert dilated(torch.randn(1, 3, 50, 45)).shape == (1, 2, 50, 45)
