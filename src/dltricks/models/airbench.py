"""airbench: the small fast CIFAR-10 network of Keller Jordan's speedruns.

Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU" (arXiv 2404.00498, 2024;
https://github.com/KellerJordan/cifar10-airbench). Its airbench94 reaches 94.01 % mean test accuracy over
1,000 runs in 3.83 s on one A100 (the uncompiled script's header; 3.29 s compiled), about 10 epochs. The
network, as :func:`airbench_cifar` builds it by default::

    32x32x3 -> PatchWhitening 2x2 (24 ch, frozen weights) -> GELU               (B, 24, 31, 31)
            -> ConvPoolGroup 64  -> ConvPoolGroup 256 -> ConvPoolGroup 256     (B, 256, 3, 3)
            -> global max pool -> Linear(256, 10, no bias) -> x 1/9              (B, 10)

with :class:`~dltricks.layers.conv_pool.ConvPoolGroup` (conv-pool-BN-GELU-conv-BN-GELU, dirac-initialised
convs) and batch norms whose scale is frozen at 1 and whose momentum is high (PyTorch 0.4). airbench ends
with a 3x3 max pool on the 3x3 map; a global max pool is the same there and also takes other sizes. The
logits are scaled by 1/9 (airbench's ``scaling_factor``), a fixed temperature that keeps the initial softmax
soft with the large learning rates of the recipe. 1.97 M parameters (``tests/test_airbench.py`` counts them).

The patch-whitening layer needs data: :meth:`AirbenchNet.init_from_data` sets it from training images, which
``fit`` does when the recipe says ``train.data_init: N`` (``recipes/cifar10-speedrun.yaml``). The training
tricks of airbench (Lookahead, label smoothing, flip TTA, batch-level crop and flip, no decay and a larger
learning rate on the BN shifts) are recipe keys of the one training loop; see docs/speedrun.md.

Measured here (docs/benchmarks.md, 2-core EPYC, bf16): about 4.3 ms of CPU per training image, so the recipe's 10
epochs cost about 36 CPU-minutes; 55.9 % test accuracy after 2 epochs on 5,000 images (one seed). Without the
dirac initialisation a 14-step run lost 12 points (one seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.conv_pool import ConvPoolGroup, FrozenScaleBatchNorm2d
from dltricks.layers.whitening import PatchWhitening
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Jordan 2024, 94% on CIFAR-10 in 3.29 Seconds on a Single GPU, arXiv 2404.00498"

__all__ = ["AirbenchNet", "airbench_cifar"]


class AirbenchNet(ClassifierMixin, nn.Module):
    """Patch-whitening stem, ``len(widths)`` conv-pool groups, global max pool, a bias-free linear head scaled
    by ``logit_scale`` (module docstring)."""

    head_attr = "head"
    head_bias = False

    def __init__(self, *, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (64, 256, 256),
                 whiten_kernel: int = 2, bn_momentum: float = 0.4, bn_scale: bool = False,
                 logit_scale: float = 1 / 9, dirac_init: bool = True) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.logit_scale = in_chans, num_classes, logit_scale
        self.stem = PatchWhitening(in_chans, kernel_size=whiten_kernel)
        self.stem_act = nn.GELU()
        norm = partial(FrozenScaleBatchNorm2d, momentum=bn_momentum, affine_scale=bn_scale)
        groups, c_in = [], self.stem.out_channels
        for c_out in widths:
            groups.append(ConvPoolGroup(c_in, c_out, norm_layer=norm, act_layer=nn.GELU, dirac_init=dirac_init))
            c_in = c_out
        self.stages = nn.Sequential(*groups)
        # Each group halves the map after the whitening conv's k - 1 pixel loss; the last must be >= 1 pixel.
        self.min_size = whiten_kernel - 1 + 2 ** len(widths)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.num_features = c_in
        self.head = nn.Linear(c_in, num_classes, bias=False) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation: whiten the stem on images ``x`` ``(B, C, H, W)`` (normalised)."""
        self.stem.init_from_data(x.to(self.stem.weight.device))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="airbench_cifar")
        x = self.stem_act(self.stem(x))  # (B, 2 C k^2, H - k + 1, W - k + 1)
        return self.stages(x)  # (B, widths[-1], h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # Scaling the features before the bias-free head is the same as scaling the logits (same gradients too),
        # and keeps head(pre_logits) == logits.
        x = self.pool(x).flatten(1) * self.logit_scale  # (B, widths[-1])
        return x if pre_logits else self.head(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(3, 32, 32), test_input_size=(3, 32, 32), min_input_size=9, tags=("cifar",))
def airbench_cifar(*, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (64, 256, 256),
                   whiten_kernel: int = 2, bn_momentum: float = 0.4, bn_scale: bool = False,
                   logit_scale: float = 1 / 9, dirac_init: bool = True) -> AirbenchNet:
    """airbench94's network (Jordan 2024): whitening stem, conv-pool groups 64-256-256, GELU, 1.97 M params."""
    return AirbenchNet(num_classes=num_classes, in_chans=in_chans, widths=widths, whiten_kernel=whiten_kernel,
                       bn_momentum=bn_momentum, bn_scale=bn_scale, logit_scale=logit_scale, dirac_init=dirac_init)
