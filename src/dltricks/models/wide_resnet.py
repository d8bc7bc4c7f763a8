"""Wide Residual Networks for CIFAR (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a pre-activation ResNet of depth d = 6n + 4 with three stages of n basic blocks whose widths are
multiplied by k (16k, 32k, 64k channels after a 16-channel 3x3 stem), optionally with dropout between the
two convs of each block. The paper's point: width, not only depth, buys accuracy, and a wide shallow net
uses the hardware better: WRN-28-10 (36.5 M parameters) reaches 4.17 % CIFAR-10 error (3.89 % with
dropout 0.3) against 4.92 % for the 1001-layer pre-act ResNet (10.2 M parameters), and trains several
times faster (their Table 1 and Sec. 3).

The ImageNet Wide ResNet-50-2 is a bottleneck ResNet and lives in ``models/resnet.py``.

Parameters: wide_resnet28_10 36,479,194 at 10 classes (paper: 36.5 M, 0.06 % apart, the paper's
rounding). MACs at 32x32: 5.25 G. Weight init: Kaiming normal (fan-out, ReLU), BN 1/0 (as
:class:`~dltricks.models.preact_resnet.PreActResNet`).
"""

from __future__ import annotations

from dltricks.models._registry import register_model
from dltricks.models.preact_resnet import PreActResNet

PAPER = "Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016"

__all__ = ["wide_resnet_cifar"]


def wide_resnet_cifar(depth: int, widen_factor: int, **kwargs) -> PreActResNet:
    """WRN-depth-widen_factor for 32x32 inputs (depth = 6n + 4)."""
    if (depth - 4) % 6:
        raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    k = widen_factor
    return PreActResNet("basic", (n, n, n), stem="cifar", stem_width=16, stage_widths=(16 * k, 32 * k, 64 * k),
                        **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 8, 8))
def wide_resnet28_10(*, num_classes: int = 10, in_chans: int = 3, block_dropout: float = 0.0, **kwargs) -> PreActResNet:
    """WRN-28-10: 36,479,194 parameters; ``block_dropout=0.3`` for the paper's best CIFAR result."""
    return wide_resnet_cifar(28, 10, num_classes=num_classes, in_chans=in_chans, block_dropout=block_dropout, **kwargs)
