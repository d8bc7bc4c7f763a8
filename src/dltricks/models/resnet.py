"""ResNet, ResNeXt, Wide ResNet-50 and the CIFAR ResNets, with an encoder interface for dense prediction.

Papers:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (ResNet).
    Xie, Girshick, Dollar, Tu & He, "Aggregated Residual Transformations for Deep Neural Networks",
    CVPR 2017 (ResNeXt). Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (wide_resnet50_2).

A residual block learns the change to its input instead of the whole mapping:

    y = act(x_shortcut + F(x)),   F = BN(conv(act(BN(conv(x)))))   (basic block, two 3x3 convs)
                                  F = 1x1 reduce -> 3x3 -> 1x1 expand (bottleneck, 4x expansion)

The identity path lets gradients reach early layers unattenuated: He et al. report a 34-layer plain net
with *higher* training error than its 18-layer version (degradation, Fig. 4; top-1 error 28.54 % vs
27.94 %), while with shortcuts the 34-layer net is the better one (25.03 % vs 27.88 %, Table 2). When a
stage changes width or stride the shortcut is a strided 1x1 conv + BN (option "B"); the CIFAR nets of
Sec. 4.2 use the parameter-free option "A" (subsample and zero-pad channels).

Layout (torchvision-compatible state-dict names: ``conv1 bn1 layer1..layer4 fc``, blocks ``conv1 bn1 conv2
bn2 [conv3 bn3] downsample.0/1``):

* ``stem="imagenet"``: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (stride 4 before ``layer1``).
* ``stem="cifar"``: one 3x3/1 conv, BN, ReLU, no pooling, for 32x32 inputs (as in the CIFAR
  experiments of He et al. and the widely used ``resnet18`` CIFAR adaptation).
* The bottleneck puts the stride on the 3x3 conv ("ResNet v1.5", as torchvision and most
  re-implementations): same parameters as the paper's stride-on-1x1, more MACs (4.09 G vs the
  paper's 3.8 G "FLOPs" for ResNet-50) and about 0.5 % better top-1.
* ResNeXt (``groups=32, width_per_group=4``) replaces the bottleneck's 3x3 by a grouped 3x3 of width
  ``planes * width_per_group / 64 * groups``; Wide ResNet-50-2 doubles that inner width
  (``width_per_group=128``).

Parameter counts at 1000 classes (tested exactly; torchvision's figures): resnet18 11,689,512;
resnet34 21,797,672; resnet50 25,557,032; resnet101 44,549,160; resnet152 60,192,808;
resnext50_32x4d 25,028,904; wide_resnet50_2 68,883,240; seresnet50 28,088,024 (SE paper: "~2.5 M more
than ResNet-50"; CBAM paper Table 4: 28.09 M). CIFAR nets at 10 classes (He et al. Table 6, option A):
resnet20 0.27 M (ours 269,722), resnet32 0.46 M (464,154), resnet44 0.66 M (658,586), resnet56 0.85 M
(853,018), resnet110 1.7 M (1,727,962); differences are the paper's rounding. Forward MACs at
1x3x224x224 (``torch.utils.flop_counter``, convs + fc): resnet50 4.09 G (tested), resnet18 1.81 G.

Weight init: He/Kaiming normal with fan-out for every conv (He et al. 2015, "Delving deep into
rectifiers": keeps the activation variance of ReLU nets constant with depth), BN gamma = 1, beta = 0,
the fc layer keeps PyTorch's default uniform init. ``zero_init_residual=True`` sets the gamma of the
last BN in every residual branch to 0 so each block starts as the identity (Goyal et al., "Accurate,
Large Minibatch SGD", 2017, Sec. 5.1: it eases optimisation early in training, notably with large
batches).

Encoder contract (used by segmentation models):

* ``output_stride`` (8, 16 or 32 with the ImageNet stem) replaces the stride of the last stages by
  dilation, as DeepLab (Chen et al. 2017) and torchvision's ``replace_stride_with_dilation`` do: a
  stage that would push the total stride past ``output_stride`` keeps stride 1 and multiplies its
  dilation by 2 instead. The first block of such a stage keeps the previous dilation (the torchvision
  convention); ``multi_grid=(1, 2, 4)`` instead gives the blocks of the last stage dilations
  ``rate * multi_grid[j]`` (DeepLabv3 Sec. 3.2; needs one entry per block of that stage).
* ``forward_features_list(x)`` returns ``[stem, layer1, ..., layerN]``, highest resolution first: the
  stem output after conv-BN-ReLU (before max-pooling) and the output of every stage.
  ``model.feature_channels`` and ``model.feature_strides`` give their channels and strides, e.g.
  resnet50 at output_stride 16: channels ``[64, 256, 512, 1024, 2048]``, strides ``[2, 4, 8, 16, 16]``.
  ``forward_intermediates`` is the same method under timm's name.
* ``forward_features(x)`` is the last map; ``forward_head(x)`` pools and classifies it;
  ``get_classifier()`` is ``fc`` and ``reset_classifier(num_classes)`` replaces it (0 gives pooled features):
  the classifier interface of :mod:`dltricks.models._classifier`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dltricks.layers.activations import get_act_layer
from dltricks.layers.cbam import CBAM
from dltricks.layers.checks import check_image_input
from dltricks.layers.drop import DropPath
from dltricks.layers.init import init_cnn_
from dltricks.layers.norm import get_norm_layer
from dltricks.layers.se import SqueezeExcite
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
PAPER_RESNEXT = "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017"
PAPER_WRN = "Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016"
PAPER_SE = "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018"

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "make_attn", "stage_strides_and_dilations"]

AttnLayer = str | Callable[[int], nn.Module] | None


def make_attn(attn_layer: AttnLayer, channels: int) -> nn.Module:
    """Channel attention inside a residual branch: ``"se"`` (SE, r=16), ``"cbam"`` or a callable."""
    if attn_layer is None:
        return nn.Identity()
    if callable(attn_layer):
        return attn_layer(channels)
    if attn_layer == "se":
        return SqueezeExcite(channels, 1 / 16)
    if attn_layer == "cbam":
        return CBAM(channels, 1 / 16)
    raise ValueError(f"unknown attn_layer {attn_layer!r}: choose 'se', 'cbam', None or a callable")


class PadShortcut(nn.Module):
    """Option-A shortcut of He et al. Sec. 4.2: subsample by ``stride`` and zero-pad the extra channels."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_chs - in_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (B, C_in, H/s, W/s)
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))  # (B, C_out, H/s, W/s), new channels = 0


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an identity (or projected) shortcut: ResNet-18/34 and CIFAR ResNets."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, *, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, first_dilation: int | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, attn_layer: AttnLayer = None,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64 (use the bottleneck for ResNeXt/WRN)")
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=first_dilation, dilation=first_dilation,
                               bias=False)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.attn = make_attn(attn_layer, planes)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act2 = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.attn(self.bn2(self.conv2(x)))
        return self.act2(self.drop_path(x) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, grouped, dilated), 1x1 expand by 4; stride on the 3x3 (v1.5)."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, *, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, first_dilation: int | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, attn_layer: AttnLayer = None,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        # Inner width: planes for ResNet, planes * 4/64 * 32 = 2 * planes for ResNeXt-50 32x4d,
        # 2 * planes for Wide ResNet-50-2 (base_width 128).
        width = int(planes * (base_width / 64.0)) * groups
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=first_dilation, dilation=first_dilation,
                               groups=groups, bias=False)
        self.bn2 = norm_layer(width)
        self.act2 = act_layer()
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = norm_layer(out_chs)
        self.attn = make_attn(attn_layer, out_chs)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act3 = act_layer()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.attn(self.bn3(self.conv3(x)))
        return self.act3(self.drop_path(x) + shortcut)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def stage_strides_and_dilations(stem_stride: int, strides: Sequence[int], output_stride: int | None
                                ) -> tuple[list[int], list[int], list[int]]:
    """Per-stage (stride, dilation, total stride) once strides past ``output_stride`` become dilation.

    Returns ``(strides, dilations, feature_strides)``; e.g. stem stride 4, strides (1, 2, 2, 2) and
    output stride 8 give strides [1, 2, 1, 1], dilations [1, 1, 2, 4], feature strides [4, 8, 8, 8].
    """
    natural = stem_stride
    for s in strides:
        natural *= s
    if output_stride is None:
        output_stride = natural
    # Halve the natural stride until it would cut into the stem: e.g. 32, 16, 8, 4 for the ImageNet stem.
    allowed = [natural]
    while allowed[-1] % 2 == 0 and allowed[-1] // 2 >= stem_stride:
        allowed.append(allowed[-1] // 2)
    if output_stride not in allowed:
        raise ValueError(f"output_stride must be one of {sorted(allowed)} for this network, got {output_stride}")
    out_strides, dilations, feature_strides = [], [], []
    total, dilation = stem_stride, 1
    for s in strides:
        if total * s > output_stride:
            dilation *= s
            s = 1
        total *= s
        out_strides.append(s)
        dilations.append(dilation)
        feature_strides.append(total)
    return out_strides, dilations, feature_strides


class ResNet(ClassifierMixin, nn.Module):
    """ResNet / ResNeXt / Wide ResNet backbone with a global-average-pool + linear head.

    Args:
        block: ``"basic"``, ``"bottleneck"`` or a block class with an ``expansion`` attribute.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50; any number of stages.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, no pooling).
        stem_width: channels of the stem conv.
        stage_widths: ``planes`` of each stage (output channels = planes * block.expansion).
        groups, width_per_group: ResNeXt cardinality and per-group width (64 = plain ResNet).
        shortcut: ``"B"`` (1x1 conv + BN projection when shape changes) or ``"A"`` (zero-padding).
        output_stride, multi_grid: see the module docstring (encoder use).
        zero_init_residual: zero the last BN gamma of every residual branch.
        drop_rate: dropout before the classifier. drop_path_rate: stochastic depth, rising linearly
            from 0 at the first block to this value at the last (Huang et al. 2016).
        norm_layer, act_layer: names (``"batch"``, ``"group"``...; ``"relu"``, ``"silu"``...) or callables.
        attn_layer: ``"se"``, ``"cbam"`` or a callable ``channels -> module`` in every block.
    """

    head_attr = "fc"

    def __init__(self, block: str | type[nn.Module] = "bottleneck", layers: Sequence[int] = (3, 4, 6, 3), *,
                 num_classes: int = 1000, in_chans: int = 3, stem: str = "imagenet", stem_width: int = 64,
                 stage_widths: Sequence[int] = (64, 128, 256, 512), groups: int = 1, width_per_group: int = 64,
                 shortcut: str = "B", output_stride: int | None = None, multi_grid: Sequence[int] | None = None,
                 zero_init_residual: bool = False, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: str | Callable[[int], nn.Module] = "batch",
                 act_layer: str | Callable[[], nn.Module] = "relu", attn_layer: AttnLayer = None) -> None:
        super().__init__()
        block_cls = BLOCKS[block] if isinstance(block, str) else block
        if len(stage_widths) != len(layers):
            raise ValueError(f"stage_widths has {len(stage_widths)} entries but layers has {len(layers)}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        norm = get_norm_layer(norm_layer)
        act = get_act_layer(act_layer)
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate

        # Stem.
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            stem_stride, pool_stride = 2, 2
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
            stem_stride, pool_stride = 1, 1
        self.bn1 = norm(stem_width)
        self.act1 = act()

        # Stages: stride 1 for the first, 2 for the others, unless output_stride turns it into dilation.
        base_strides = [1] + [2] * (len(layers) - 1)
        strides, dilations, stage_feature_strides = stage_strides_and_dilations(
            stem_stride * pool_stride, base_strides, output_stride)
        if multi_grid is not None and len(multi_grid) != layers[-1]:
            raise ValueError(f"multi_grid needs one rate per block of the last stage ({layers[-1]}), "
                             f"got {tuple(multi_grid)}")
        total_blocks = sum(layers)
        block_idx = 0
        in_chs, prev_dilation = stem_width, 1
        self.stage_names: list[str] = []
        channels = [stem_width]
        for stage_idx, (num_blocks, planes, stride, dilation) in enumerate(
                zip(layers, stage_widths, strides, dilations)):
            out_chs = planes * block_cls.expansion
            downsample: nn.Module | None = None
            if stride != 1 or in_chs != out_chs:
                if shortcut == "A":
                    downsample = PadShortcut(in_chs, out_chs, stride)
                else:
                    downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), norm(out_chs))
            last_stage = stage_idx == len(layers) - 1
            blocks: list[nn.Module] = []
            for j in range(num_blocks):
                if last_stage and multi_grid is not None:
                    first_dil = block_dil = dilation * multi_grid[j]
                else:
                    block_dil = dilation
                    first_dil = prev_dilation if j == 0 else dilation
                rate = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(block_cls(
                    in_chs if j == 0 else out_chs, planes, stride=stride if j == 0 else 1,
                    downsample=downsample if j == 0 else None, groups=groups, base_width=width_per_group,
                    dilation=block_dil, first_dilation=first_dil, norm_layer=norm, act_layer=act,
                    attn_layer=attn_layer, drop_path=rate))
                block_idx += 1
            name = f"layer{stage_idx + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            channels.append(out_chs)
            in_chs, prev_dilation = out_chs, dilation

        self.feature_channels: list[int] = channels
        self.feature_strides: list[int] = [stem_stride] + stage_feature_strides
        self.output_stride = self.feature_strides[-1]
        self.num_features = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(zero_init_residual=zero_init_residual)

    def init_weights(self, *, zero_init_residual: bool = False) -> None:
        """Kaiming-normal (fan-out, ReLU gain) convs, BN gamma 1 / beta 0, optional zero last gamma."""
        init_cnn_(self, linear="keep")
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_features_list(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[stem, layer1, ..., layerN]`` feature maps, highest resolution first (see module docstring)."""
        check_image_input(x, in_chans=self.in_chans, min_size=1, model=type(self).__name__)
        x = self.act1(self.bn1(self.conv1(x)))  # (B, stem_width, H/2, W/2) (H, W for the CIFAR stem)
        features = [x]
        x = self.maxpool(x)  # (B, stem_width, H/4, W/4)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    forward_intermediates = forward_features_list

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map, ``(B, num_features, H / output_stride, W / output_stride)``."""
        check_image_input(x, in_chans=self.in_chans, min_size=1, model=type(self).__name__)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)  # (B, num_features)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------
# Registered models.

def _resnet(block: str, layers: Sequence[int], **kwargs) -> ResNet:
    return ResNet(block, layers, **kwargs)


_IMAGENET = dict(input_size=(3, 224, 224), test_input_size=(3, 32, 32))
_CIFAR = dict(input_size=(3, 32, 32), test_input_size=(3, 16, 16))


@register_model(paper=PAPER, **_IMAGENET)
def resnet18(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2), 11,689,512 parameters, 1.81 G MACs at 224."""
    return _resnet("basic", (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, **_IMAGENET)
def resnet34(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3), 21,797,672 parameters."""
    return _resnet("basic", (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, **_IMAGENET)
def resnet50(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-50: bottlenecks (3, 4, 6, 3), 25,557,032 parameters, 4.09 G MACs at 224."""
    return _resnet("bottleneck", (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, **_IMAGENET)
def resnet101(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-101: bottlenecks (3, 4, 23, 3), 44,549,160 parameters."""
    return _resnet("bottleneck", (3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, **_IMAGENET)
def resnet152(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-152: bottlenecks (3, 8, 36, 3), 60,192,808 parameters."""
    return _resnet("bottleneck", (3, 8, 36, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER_RESNEXT, **_IMAGENET)
def resnext50_32x4d(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNeXt-50 (32x4d): cardinality 32, 4 channels per group; 25,028,904 parameters (paper: 25.0 M)."""
    return _resnet("bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4, num_classes=num_classes,
                   in_chans=in_chans, **kwargs)


@register_model(paper=PAPER_WRN, **_IMAGENET)
def wide_resnet50_2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with twice the bottleneck width; 68,883,240 parameters (paper: 68.9 M)."""
    return _resnet("bottleneck", (3, 4, 6, 3), width_per_group=128, num_classes=num_classes, in_chans=in_chans,
                   **kwargs)


@register_model(paper=PAPER_SE, **_IMAGENET)
def seresnet50(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """SE-ResNet-50: an SE gate (r=16) on every bottleneck's residual branch; 28,088,024 parameters."""
    kwargs.setdefault("attn_layer", "se")
    return _resnet("bottleneck", (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, **_CIFAR)
def resnet18_cifar(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool): 11,173,962 parameters at 10 classes."""
    return _resnet("basic", (2, 2, 2, 2), stem="cifar", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, **_CIFAR)
def resnet34_cifar(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-34 with the CIFAR stem: 21,282,122 parameters at 10 classes."""
    return _resnet("basic", (3, 4, 6, 3), stem="cifar", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, **_CIFAR)
def resnet50_cifar(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-50 with the CIFAR stem: 23,520,842 parameters at 10 classes."""
    return _resnet("bottleneck", (3, 4, 6, 3), stem="cifar", num_classes=num_classes, in_chans=in_chans, **kwargs)


def _cifar_resnet(depth: int, **kwargs) -> ResNet:
    """He et al. Sec. 4.2: 6n+2 layers, three stages of n basic blocks at 16/32/64 channels, option-A shortcuts."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    kwargs.setdefault("shortcut", "A")
    return ResNet("basic", (n, n, n), stem="cifar", stem_width=16, stage_widths=(16, 32, 64), **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 32, 32))
def resnet20(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-20 (n=3): 269,722 parameters (paper Table 6: 0.27 M; 8.75 % CIFAR-10 error)."""
    return _cifar_resnet(20, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 32, 32))
def resnet32(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-32 (n=5): 464,154 parameters (paper: 0.46 M; 7.51 % error)."""
    return _cifar_resnet(32, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 32, 32))
def resnet44(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-44 (n=7): 658,586 parameters (paper: 0.66 M; 7.17 % error)."""
    return _cifar_resnet(44, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 32, 32))
def resnet56(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-56 (n=9): 853,018 parameters (paper: 0.85 M; 6.97 % error)."""
    return _cifar_resnet(56, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 16, 16))
def resnet110(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-110 (n=18): 1,727,962 parameters (paper: 1.7 M; 6.43 % error)."""
    return _cifar_resnet(110, num_classes=num_classes, in_chans=in_chans, **kwargs)
