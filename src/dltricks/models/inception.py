"""Inception v3 (Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, "Rethinking the Inception Architecture for
Computer Vision", CVPR 2016).

The paper's design principles, each visible in a module below:

* **Factorize large kernels into smaller ones** (Sec. 3.1): a 5x5 conv becomes two 3x3 convs
  (``branch3x3dbl`` in :class:`InceptionA`), 28 % fewer weights for the same receptive field.
* **Asymmetric factorization** (Sec. 3.2): an n x n conv becomes 1 x n then n x 1 (``branch7x7`` in
  :class:`InceptionC`: 1x7 + 7x1 costs 2 x 7 = 14 weights per channel pair instead of 49), applied
  on the 17x17 grid where it works well; :class:`InceptionE` splits 3x3 into parallel 1x3 and 3x1 outputs
  to widen the coarsest (8x8) grid.
* **Efficient grid reduction** (Sec. 5): instead of pooling then convolving (a representational
  bottleneck) or convolving then pooling (expensive), a stride-2 conv branch and a stride-2 pooling branch
  run in parallel and are concatenated (:class:`InceptionB`, :class:`InceptionD`).
* **Auxiliary classifier as regularizer** (Sec. 4): one head on the 17x17 grid; the paper found it does
  not speed up early training but improves the final result when it has batch norm (+0.4 % top-1).
  ``aux_logits=True`` returns ``(logits, aux)`` in training mode (the trainer's loss adds 0.3 x the aux
  loss), plain logits in eval mode.

Layout and module names follow the released model (and torchvision): ``Conv2d_1a_3x3 ... Mixed_5b ...
Mixed_7c, AuxLogits, fc``; every conv is conv (no bias) + BN (eps 1e-3) + ReLU. The released model keeps a
5x5 branch next to the double-3x3 branch in the 35x35 modules.

Parameters at 1000 classes (tested exactly): 23,834,568 without the auxiliary head (the default; timm's
count) and 27,161,264 with it (``aux_logits=True``; torchvision's default). The aux head is 3,326,696
parameters: 1x1 conv 768->128 + BN, 5x5 conv 128->768 + BN, linear 768->1000. (The issue text calls
23,834,568 "with its aux head"; the arithmetic above shows it is the count without.) The paper's abstract
puts the network under 25 million parameters and at 5 billion multiply-adds per inference; we count 5.71 G
MACs at 299 (convs + linear, ``torch.utils.flop_counter``; torchvision reports the same 5.71 G), 14 %
above the abstract's round figure, which the paper does not break down.

Input: 299x299; the network needs at least 75x75 (smaller inputs raise a clear error). The aux head pools
5x5/3 on the 17x17 grid as in the paper and adaptively to 5x5 on smaller grids.

Weight init: Kaiming normal (fan-out, ReLU) for convs, N(0, 0.01) for linear layers, BN 1/0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.init import init_cnn_
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016"

__all__ = ["InceptionV3", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "InceptionAuxV3"]


class BasicConv2d(nn.Module):
    """Conv (no bias), BN (eps 1e-3, as the TensorFlow reference), ReLU."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], *, stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=0.001)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _avg_pool_branch(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35x35 module: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1; 224 + pool_features channels."""

    def __init__(self, in_chs: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_chs, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_chs, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_chs, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_chs, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_branch(x))
        return torch.cat([b1, b5, b3, bp], dim=1)  # (B, 64 + 64 + 96 + pool_features, H, W)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: stride-2 3x3 | 1x1 -> 3x3 -> 3x3/2 | 3x3/2 max-pool, concatenated."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_chs, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_chs, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, bd, bp], dim=1)  # (B, 384 + 96 + C_in, H/2, W/2)


class InceptionC(nn.Module):
    """17x17 module with asymmetric 1x7 / 7x1 factorisation; ``c7`` is the inner width. 768 channels out."""

    def __init__(self, in_chs: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_chs, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_chs, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_chs, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_chs, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
        bp = self.branch_pool(_avg_pool_branch(x))
        return torch.cat([b1, b7, bd, bp], dim=1)  # (B, 768, H, W)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | 3x3/2 max-pool."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_chs, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_chs, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)  # (B, 320 + 192 + C_in, H/2, W/2)


class InceptionE(nn.Module):
    """8x8 module: 3x3 convs split into parallel 1x3 and 3x1 outputs ("expanded filter bank"). 2048 out."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_chs, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_chs, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_chs, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_chs, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)  # (B, 768, H, W)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)  # (B, 768, H, W)
        bp = self.branch_pool(_avg_pool_branch(x))
        return torch.cat([b1, b3, bd, bp], dim=1)  # (B, 320 + 768 + 768 + 192 = 2048, H, W)


class InceptionAuxV3(nn.Module):
    """Auxiliary head on the 17x17 grid: 5x5/3 average pool, 1x1 conv 128, 5x5 conv 768, linear."""

    def __init__(self, in_chs: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_chs, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5)
        self.fc = nn.Linear(768, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= 17:
            x = F.avg_pool2d(x, 5, stride=3)  # (B, 768, 5, 5) at 299 px
        else:
            x = F.adaptive_avg_pool2d(x, 5)  # smaller inputs: still a 5x5 grid for the 5x5 conv
        x = self.conv1(self.conv0(x))  # (B, 768, h, w); 1x1 at 299 px
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 768)
        return self.fc(x)


class InceptionV3(ClassifierMixin, nn.Module):
    """Inception v3 classifier; ``aux_logits=True`` returns ``(logits, aux)`` in training mode.

    Classifier interface: ``forward_features`` is the (B, 2048, H', W') map of ``Mixed_7c``,
    ``forward_head`` pools, applies dropout and ``fc``; ``reset_classifier`` also replaces the auxiliary
    head's ``AuxLogits.fc`` so both outputs have ``num_classes`` columns.
    """

    head_attr = "fc"

    MIN_SIZE = 75

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = False,
                 drop_rate: float = 0.5) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.aux_logits = in_chans, num_classes, aux_logits
        self.Conv2d_1a_3x3 = BasicConv2d(in_chans, 32, 3, stride=2)  # (B, 32, 149, 149) at 299
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)  # (B, 32, 147, 147)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)  # (B, 64, 147, 147)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)  # (B, 64, 73, 73)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)  # (B, 192, 71, 71)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)  # (B, 192, 35, 35)
        self.Mixed_5b = InceptionA(192, 32)  # (B, 256, 35, 35)
        self.Mixed_5c = InceptionA(256, 64)  # (B, 288, 35, 35)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)  # (B, 768, 17, 17)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.AuxLogits = InceptionAuxV3(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)  # (B, 1280, 8, 8)
        self.Mixed_7b = InceptionE(1280)  # (B, 2048, 8, 8)
        self.Mixed_7c = InceptionE(2048)
        self.num_features = 2048
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2048, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        init_cnn_(self)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.AuxLogits is not None:
            self.AuxLogits.fc = self._new_classifier(num_classes, in_features=768)

    def _trunk(self, x: torch.Tensor, *, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last map and, with ``with_aux``, the auxiliary head's output."""
        check_image_input(x, in_chans=self.in_chans, min_size=self.MIN_SIZE, model="Inception v3")
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        aux = self.AuxLogits(x) if with_aux and self.AuxLogits is not None else None
        return self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x))), aux  # (B, 2048, 8, 8)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.global_pool(x).flatten(1))  # (B, 2048)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, aux = self._trunk(x, with_aux=self.training)
        logits = self.forward_head(x)
        return (logits, aux) if aux is not None else logits


@register_model(paper=PAPER, input_size=(3, 299, 299), test_input_size=(3, 75, 75), min_input_size=InceptionV3.MIN_SIZE)
def inception_v3(*, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = False,
                 drop_rate: float = 0.5) -> InceptionV3:
    """Inception v3: 23,834,568 parameters (27,161,264 with ``aux_logits=True``), 5.71 G MACs at 299."""
    return InceptionV3(num_classes=num_classes, in_chans=in_chans, aux_logits=aux_logits, drop_rate=drop_rate)
