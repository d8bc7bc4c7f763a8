"""ConvNeXt (Liu, Mao, Wu, Feichtenhofer, Darrell & Xie, "A ConvNet for the 2020s", CVPR 2022) and a
large-kernel variant with 31x31 depthwise convolutions.

ConvNeXt modernises ResNet-50 step by step toward a Swin Transformer's design and keeps a pure ConvNet:
a "patchify" stem (4x4 conv, stride 4), stage ratio 1:1:3:1, a 7x7 depthwise conv (the "token mixer"),
an inverted bottleneck MLP (C -> 4C -> C), GELU, one LayerNorm per block, separate 2x2/2 downsampling
layers with their own LayerNorm, layer scale and stochastic depth. Each block computes

    y = x + drop_path(gamma * Linear_2(GELU(Linear_1(LN(dwconv_kxk(x))))))

with the two linears applied per pixel on a channels-last view, ``gamma`` a learnable per-channel scale
initialised to 1e-6 (Touvron et al., CaiT 2021) so every block starts close to the identity.

Numbers at 1000 classes (tested exactly, identical to torchvision and timm): convnext_tiny 28,589,128
(4.46 G MACs at 224, tested; paper Table 1: 28 M and 4.5 G - the paper's 28 M is 2 % below our count,
the same network as the released checkpoint: its table drops the decimals for T while it rounds B's
88.59 M up); convnext_small 50,223,688 (50 M); convnext_base 88,591,464 (89 M). ImageNet-1K top-1 in the
paper: 82.1 / 83.1 / 83.8 %.

**Large kernels.** ``convnext_tiny_lk31`` uses a 31x31 depthwise kernel in every block, in the spirit of
RepLKNet (Ding et al., "Scaling Up Your Kernels to 31x31", CVPR 2022: a few very large depthwise kernels
give a large *effective* receptive field cheaply, since depthwise weights grow with k^2 * C, not
k^2 * C^2). It has no published counterpart: it adds ``(31^2 - 7^2) * sum(C over blocks)`` = 912 x 6,624
= 6,041,088 weights, 34,630,216 parameters in total, and 6.41 G MACs at 224 (tested). The ConvNeXt paper
itself found 7x7 saturating on ImageNet (Sec. 2.5: 3x3 79.9 %, 7x7 80.6 %, 9-11 no further gain);
RepLKNet's gains at 31x31 come with structural re-parameterisation (a parallel small kernel merged after
training), which this variant does not include.

Weight init: truncated normal (std 0.02) for conv and linear weights, zero biases, LayerNorm 1/0 (as
the reference code; ConvNeXt has no BN, so Kaiming's ReLU gain does not apply). Defaults follow the
paper's ImageNet-1K recipe for ``drop_path_rate`` (0.1 / 0.4 / 0.5 for T / S / B).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.drop import DropPath
from dltricks.layers.mlp import Mlp
from dltricks.layers.norm import LayerNorm2d
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Liu et al., A ConvNet for the 2020s, CVPR 2022"

__all__ = ["ConvNeXtBlock", "ConvNeXtStage", "ConvNeXt"]


class ConvNeXtBlock(nn.Module):
    """Depthwise k x k conv, LayerNorm, inverted-bottleneck MLP with GELU, layer scale, drop path."""

    def __init__(self, dim: int, *, kernel_size: int = 7, mlp_ratio: float = 4.0, layer_scale_init: float = 1e-6,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)  # (B, C, H, W): spatial mixing, one filter per channel
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C): per-pixel channel MLP on the last dim
        x = self.mlp(self.norm(x))  # (B, H, W, C)
        if self.gamma is not None:
            x = x * self.gamma
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        return shortcut + self.drop_path(x)


class ConvNeXtStage(nn.Module):
    """Optional downsampling (LayerNorm + 2x2 conv, stride 2), then ``depth`` blocks."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, *, downsample: bool, kernel_size: int,
                 drop_path_rates: Sequence[float], layer_scale_init: float, mlp_ratio: float) -> None:
        super().__init__()
        self.downsample = (nn.Sequential(LayerNorm2d(in_chs), nn.Conv2d(in_chs, out_chs, 2, stride=2))
                           if downsample else nn.Identity())
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_chs, kernel_size=kernel_size, mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init,
                          drop_path=drop_path_rates[i]) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(ClassifierMixin, nn.Module):
    """ConvNeXt classifier.

    Args:
        depths, dims: blocks and channels per stage ((3, 3, 9, 3), (96, 192, 384, 768) for T).
        kernel_size: depthwise kernel, one int or one per stage (7 in the paper).
        drop_path_rate: stochastic depth at the last block, rising linearly from 0.
        layer_scale_init: initial gamma (0 disables layer scale).
        head_init_scale: multiplies the classifier's initial weights (0.001 for fine-tuning in the paper).

    ``forward_head`` pools, applies the final LayerNorm and dropout (the pre-logit features) and ``head``.
    """

    head_attr = "head"

    def __init__(self, *, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 num_classes: int = 1000, in_chans: int = 3, kernel_size: int | Sequence[int] = 7,
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 layer_scale_init: float = 1e-6, head_init_scale: float = 1.0) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, dims[-1]
        kernel_sizes = [kernel_size] * len(depths) if isinstance(kernel_size, int) else list(kernel_size)
        # Patchify stem: non-overlapping 4x4 patches, then LayerNorm over channels.
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        stages, in_chs, start = [], dims[0], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(ConvNeXtStage(in_chs, dim, depth, downsample=i > 0, kernel_size=kernel_sizes[i],
                                        drop_path_rates=rates[start:start + depth], layer_scale_init=layer_scale_init,
                                        mlp_ratio=mlp_ratio))
            in_chs, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.feature_channels: list[int] = list(dims)
        self.feature_strides: list[int] = [4 * 2 ** i for i in range(len(depths))]
        self.min_size = self.feature_strides[-1]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)  # on the pooled features
        self.dropout = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(head_init_scale=head_init_scale)

    def init_weights(self, *, head_init_scale: float = 1.0) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def _check(self, x: torch.Tensor) -> None:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="ConvNeXt")

    def forward_features_list(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs at strides 4, 8, 16, 32, highest resolution first."""
        self._check(x)
        x = self.stem(x)  # (B, C0, H/4, W/4)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.stages(self.stem(x))  # (B, C3, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean((2, 3)))  # (B, C3): global average pool, then LayerNorm
        x = self.dropout(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_REG = dict(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=32)


@register_model(**_REG)
def convnext_tiny(*, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.1, **kwargs) -> ConvNeXt:
    """ConvNeXt-T: depths (3, 3, 9, 3), dims (96, 192, 384, 768); 28,589,128 parameters, 4.46 G MACs."""
    return ConvNeXt(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_classes=num_classes, in_chans=in_chans,
                    drop_path_rate=drop_path_rate, **kwargs)


@register_model(**_REG)
def convnext_small(*, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.4, **kwargs) -> ConvNeXt:
    """ConvNeXt-S: depths (3, 3, 27, 3), dims (96, 192, 384, 768); 50,223,688 parameters."""
    return ConvNeXt(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), num_classes=num_classes, in_chans=in_chans,
                    drop_path_rate=drop_path_rate, **kwargs)


@register_model(**_REG)
def convnext_base(*, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.5, **kwargs) -> ConvNeXt:
    """ConvNeXt-B: depths (3, 3, 27, 3), dims (128, 256, 512, 1024); 88,591,464 parameters."""
    return ConvNeXt(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), num_classes=num_classes, in_chans=in_chans,
                    drop_path_rate=drop_path_rate, **kwargs)


@register_model(paper="Ding et al., Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs, "
                      "CVPR 2022 (kernel size); Liu et al. 2022 (ConvNeXt-T body)",
                input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=32)
def convnext_tiny_lk31(*, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.1,
                       **kwargs) -> ConvNeXt:
    """ConvNeXt-T with 31x31 depthwise kernels in every block: 34,630,216 parameters, 6.41 G MACs at 224."""
    kwargs.setdefault("kernel_size", 31)
    return ConvNeXt(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_classes=num_classes, in_chans=in_chans,
                    drop_path_rate=drop_path_rate, **kwargs)
