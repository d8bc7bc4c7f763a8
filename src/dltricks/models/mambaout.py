"""MambaOut (Yu & Wang 2024, "MambaOut: Do We Really Need Mamba for Vision?", CVPR 2025).

A four-stage hierarchical network of Gated CNN blocks (:class:`~dltricks.layers.ssm.GatedCNNBlock`):
Mamba's gated block with the state-space model removed. The paper's hypothesis H1 is that an SSM is
unnecessary for ImageNet classification (a short-sequence, non-causal task); MambaOut-Tiny reaches
82.7 % top-1 against 82.5 % for VMamba-T, with fewer parameters and MACs (paper Table 1).

Architecture (official code, ``yuweihao/MambaOut``):

* stem: 3×3 conv stride 2 to C₁/2 → LN → GELU → 3×3 conv stride 2 to C₁ → LN (channels-last);
* stages i = 1..4 of dᵢ Gated CNN blocks (7×7 depthwise conv, expansion 8/3, conv on C channels),
  separated by 3×3 stride-2 convs + LN;
* head: global average pool → LN → MLP (C₄ → 4C₄, GELU, LN) → classes.

Variants (depths / widths): femto 3-3-9-3 / 48-96-192-288, kobe 3-3-15-3 / 48-96-192-288,
tiny 3-3-9-3 / 96-192-384-576, small 3-4-27-3 / 96-192-384-576, base 3-4-27-3 / 128-256-512-768.

Measured (``tests/test_mambaout.py``): at 1000 classes the parameter counts equal the published
7,304,536 / 9,141,208 / 26,545,096 / 48,488,072 / 84,813,092, and the forward MACs at 224×224
(``torch.utils.flop_counter``, MACs = FLOPs/2, convolutions and matrix products) are within 1 % of the
published 1.15 / 1.51 / 4.47 / 8.94 / 15.79 G.

CIFAR variants keep the blocks but use a stride-2 stem (first 3×3 conv stride 1, second stride 2), so a
32×32 image becomes a 16×16 map in stage 1 instead of 8×8: ``mambaout_femto_cifar`` (femto's depths and
widths) and ``mambaout_cifar_mini`` (2-2-4-2 / 32-64-128-192, 1.7 M parameters, the H1 contender).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.ssm.gated_cnn import GatedCNNBlock
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

__all__ = ["MambaOut", "MAMBAOUT_CONFIGS"]

PAPER = "Yu & Wang, MambaOut: Do We Really Need Mamba for Vision? (CVPR 2025), arXiv:2405.07992"

# name -> (depths, dims, drop_path_rate used for ImageNet training in the official recipe)
MAMBAOUT_CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...], float]] = {
    "femto": ((3, 3, 9, 3), (48, 96, 192, 288), 0.0),
    "kobe": ((3, 3, 15, 3), (48, 96, 192, 288), 0.0),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 576), 0.2),
    "small": ((3, 4, 27, 3), (96, 192, 384, 576), 0.4),
    "base": ((3, 4, 27, 3), (128, 256, 512, 768), 0.6),
}

_LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class Stem(nn.Module):
    """3×3 conv (stride s₁) to C/2 → LN → GELU → 3×3 conv (stride s₂) to C → LN; returns (B, H', W', C)."""

    def __init__(self, in_chans: int, out_chans: int, *, strides: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, 3, stride=strides[0], padding=1)
        self.norm1 = _LayerNorm(out_chans // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, 3, stride=strides[1], padding=1)
        self.norm2 = _LayerNorm(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).permute(0, 2, 3, 1)  # (B, H/2, W/2, C/2)
        x = self.act(self.norm1(x)).permute(0, 3, 1, 2)  # (B, C/2, H/2, W/2)
        x = self.conv2(x).permute(0, 2, 3, 1)  # (B, H/4, W/4, C)
        return self.norm2(x)


class Downsample(nn.Module):
    """3×3 conv stride 2 + LN between stages, on channels-last maps."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 3, stride=2, padding=1)
        self.norm = _LayerNorm(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.permute(0, 3, 1, 2))  # (B, C', H/2, W/2)
        return self.norm(x.permute(0, 2, 3, 1))  # (B, H/2, W/2, C')


class MlpHead(nn.Module):
    """fc1 (C -> 4C) → GELU → LN → dropout → fc2 (4C -> classes)."""

    def __init__(self, dim: int, num_classes: int, *, mlp_ratio: float = 4.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.norm = _LayerNorm(hidden)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.norm(self.act(self.fc1(x))))  # (B, hidden)
        return x if pre_logits else self.fc2(x)


class MambaOut(ClassifierMixin, nn.Module):
    """MambaOut classifier (module docstring).

    ``forward_features`` returns the last stage's channels-last map (B, H', W', C₄); ``forward_head``
    pools it, applies the final LayerNorm and the MLP head, whose hidden features (after GELU, LN and
    dropout; ``head_hidden_size`` = 4C₄) are the pre-logit features and whose ``head.fc2`` is the last layer.

    Args:
        depths, dims: blocks and channels per stage.
        num_classes, in_chans: classifier outputs and input channels.
        kernel_size: depthwise kernel of the Gated CNN blocks (7).
        expansion_ratio: hidden width of a block as a multiple of its width (8/3).
        conv_ratio: fraction of the channels the depthwise conv mixes (1.0).
        drop_path_rate: stochastic depth, rising linearly to this value at the last block.
        drop_rate: dropout in the head.
        stem_strides: strides of the two stem convolutions ((2, 2) for ImageNet, (1, 2) for CIFAR).
    """

    head_attr = "head.fc2"

    def __init__(self, *, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 576),
                 num_classes: int = 1000, in_chans: int = 3, kernel_size: int = 7, expansion_ratio: float = 8 / 3,
                 conv_ratio: float = 1.0, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                 stem_strides: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must have the same length")
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, dims[-1]
        self.stem = Stem(in_chans, dims[0], strides=tuple(stem_strides))  # type: ignore[arg-type]
        n_blocks = sum(depths)
        rates = [drop_path_rate * j / max(n_blocks - 1, 1) for j in range(n_blocks)]  # no tensors: meta-device safe
        self.downsamples = nn.ModuleList()
        self.stages = nn.ModuleList()
        k = 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            self.downsamples.append(nn.Identity() if i == 0 else Downsample(dims[i - 1], dim))
            self.stages.append(nn.Sequential(*[
                GatedCNNBlock(dim, expansion_ratio=expansion_ratio, kernel_size=kernel_size, conv_ratio=conv_ratio,
                              drop_path=rates[k + j]) for j in range(depth)]))
            k += depth
        self.norm = _LayerNorm(dims[-1])
        self.head = MlpHead(dims[-1], num_classes, drop_rate=drop_rate)
        self.head_hidden_size = self.head.fc1.out_features
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official init: truncated normal (std 0.02) for conv and linear weights, zero biases.
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's channels-last map (B, H', W', C₄)."""
        check_image_input(x, in_chans=self.in_chans, min_size=1, model="MambaOut")
        x = self.stem(x)  # (B, H/4, W/4, C1), channels-last from here on
        for downsample, stage in zip(self.downsamples, self.stages):
            x = stage(downsample(x))
        return x  # (B, H/32, W/32, C4)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(1, 2)))  # global average pool, LayerNorm: (B, C4)
        return self.head(x, pre_logits=pre_logits)  # (B, num_classes), or (B, 4 C4) with pre_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _mambaout(variant: str, *, cifar: bool = False, **kwargs) -> MambaOut:
    depths, dims, _ = MAMBAOUT_CONFIGS[variant]
    if cifar:
        kwargs.setdefault("stem_strides", (1, 2))
    return MambaOut(depths=depths, dims=dims, **kwargs)


_IMAGENET = dict(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=None)
_CIFAR = dict(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 32, 32), min_input_size=None)


@register_model(**_IMAGENET)
def mambaout_femto(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MambaOut:
    """MambaOut-Femto: 7.3 M parameters, 1.15 G MACs; 78.9 % ImageNet top-1 (paper)."""
    return _mambaout("femto", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_IMAGENET)
def mambaout_kobe(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MambaOut:
    """MambaOut-Kobe: 9.1 M parameters, 1.51 G MACs; 80.0 % ImageNet top-1 (paper)."""
    return _mambaout("kobe", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_IMAGENET)
def mambaout_tiny(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MambaOut:
    """MambaOut-Tiny: 26.5 M parameters, 4.47 G MACs; 82.7 % ImageNet top-1 (paper)."""
    return _mambaout("tiny", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_IMAGENET)
def mambaout_small(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MambaOut:
    """MambaOut-Small: 48.5 M parameters, 8.94 G MACs; 84.1 % ImageNet top-1 (paper)."""
    return _mambaout("small", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_IMAGENET)
def mambaout_base(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MambaOut:
    """MambaOut-Base: 84.8 M parameters, 15.79 G MACs; 84.2 % ImageNet top-1 (paper)."""
    return _mambaout("base", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_CIFAR)
def mambaout_femto_cifar(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> MambaOut:
    """MambaOut-Femto for 32×32 images (stem stride 2 instead of 4): 6.1 M parameters at 10 classes."""
    return _mambaout("femto", cifar=True, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_CIFAR)
def mambaout_cifar_mini(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> MambaOut:
    """A small MambaOut for CPU-sized CIFAR experiments: depths 2-2-4-2, widths 32-64-128-192, stem stride 2."""
    kwargs.setdefault("stem_strides", (1, 2))
    return MambaOut(depths=(2, 2, 4, 2), dims=(32, 64, 128, 192), num_classes=num_classes, in_chans=in_chans, **kwargs)
