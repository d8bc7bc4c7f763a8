"""GoogLeNet / Inception v1 (Szegedy et al., "Going Deeper with Convolutions", CVPR 2015).

An Inception module runs four branches in parallel on the same input and concatenates them:

    1x1 | 1x1 reduce -> 3x3 | 1x1 reduce -> 5x5 | 3x3 max-pool -> 1x1 projection

so the network can pick the scale of each feature (multi-scale in one layer), while the 1x1 "reduce"
convs keep the 3x3 and 5x5 convs cheap (Network-in-Network bottlenecks): in module 3a the 5x5 branch
costs 16 x 192 + 25 x 16 x 32 = 15,872 weights instead of 25 x 192 x 32 = 153,600 without the reduction.
Nine modules, 22 layers with weights, global average pooling instead of VGG-style FC layers, dropout 0.4.

**Auxiliary classifiers** (Sec. 5) after modules 4a and 4d (5x5/3 average pool, 1x1 conv 128, FC 1024,
dropout 0.7, linear) inject extra gradient into the middle of the net during training; their loss is added
with weight 0.3 (``dltricks.tasks.base.classification_loss`` does that for ``(logits, aux1, aux2)``
outputs). With ``aux_logits=True`` the model returns that tuple in training mode and plain logits in
eval mode; the heads are dropped at inference, as in the paper. (We pool them adaptively to 4x4, the
5x5/3 output at 224 px, so other input sizes work.)

Variants: ``norm_layer="batch"`` (default) puts batch norm after every conv and drops the LRN layers (the
trainable form used by torchvision and in Inception v2); ``norm_layer=None`` is the 2014 net with conv
biases and local response normalisation after the first two conv stages. The "5x5" branch uses real 5x5
kernels (torchvision keeps a 3x3 there for weight compatibility).

Parameters at 1000 classes: BN, no aux 7,005,832; with the aux heads 13,385,816 (3,188,968 + 3,191,016);
paper form (conv biases, no BN, no aux) 6,998,552 = 6,990,272 weights + 8,280 biases. Paper figure:
Table 1's "params" column sums to 6,797.7 K, where K is 1024 (module 3a: 163,328 weights = 159.5 K), i.e.
6,960,845 weights, or 6.97 M with conv1 counted as its 7 x 7 x 3 x 64 = 9,408 weights instead of the
table's 2.7 K. Ours is 0.42 % (0.33 %) above. The table's own rows do not all follow from its channel columns
(4c lists 463 K where its columns give 497.5 K, 5a 1072 K for 1018 K), which accounts for the gap.
MACs at 224: 1.58 G (paper: "1.5 billion multiply-adds").

Weight init: Kaiming normal (fan-out, ReLU) for convs, N(0, 0.01) for linear layers, zero biases, BN 1/0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.conv import ConvNormAct
from dltricks.layers.init import init_cnn_
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Szegedy et al., Going Deeper with Convolutions, CVPR 2015"

__all__ = ["InceptionModule", "InceptionAux", "GoogLeNet", "GOOGLENET_MODULES"]

NormLayer = str | Callable[[int], nn.Module] | None

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj): paper Table 1.
GOOGLENET_MODULES: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _conv(in_chs: int, out_chs: int, kernel_size: int, norm_layer: NormLayer, **kwargs) -> ConvNormAct:
    return ConvNormAct(in_chs, out_chs, kernel_size, norm_layer=norm_layer, act_layer="relu", **kwargs)


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1), concatenated."""

    def __init__(self, in_chs: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, *, norm_layer: NormLayer = "batch") -> None:
        super().__init__()
        self.branch1 = _conv(in_chs, ch1x1, 1, norm_layer)
        self.branch2 = nn.Sequential(_conv(in_chs, ch3x3red, 1, norm_layer), _conv(ch3x3red, ch3x3, 3, norm_layer))
        self.branch3 = nn.Sequential(_conv(in_chs, ch5x5red, 1, norm_layer), _conv(ch5x5red, ch5x5, 5, norm_layer))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     _conv(in_chs, pool_proj, 1, norm_layer))
        self.out_chs = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)  # (B, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool, 1x1 conv 128, FC 1024 + ReLU, dropout 0.7, linear."""

    def __init__(self, in_chs: int, num_classes: int, *, norm_layer: NormLayer = "batch",
                 drop_rate: float = 0.7) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = _conv(in_chs, 128, 1, norm_layer)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x)).flatten(1)  # (B, 2048)
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class GoogLeNet(ClassifierMixin, nn.Module):
    """GoogLeNet; ``aux_logits=True`` returns ``(logits, aux1, aux2)`` in training mode.

    Classifier interface: ``forward_features`` is the (B, 1024, H/32, W/32) map of module 5b,
    ``forward_head`` pools, applies dropout and ``fc``; ``reset_classifier`` also replaces the last layer
    of each auxiliary head so that all outputs have ``num_classes`` columns.
    """

    head_attr = "fc"

    MIN_SIZE = 31  # the ceil-mode 3x3/2 max-pools need at least a 2x2 map (1x1 before the last one fails)

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = False,
                 norm_layer: NormLayer = "batch", lrn: bool | None = None, drop_rate: float = 0.4,
                 aux_drop_rate: float = 0.7) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.aux_logits = in_chans, num_classes, aux_logits
        use_lrn = norm_layer is None if lrn is None else lrn

        def lrn_layer() -> nn.Module:
            # The paper gives no LRN constants; these are the Caffe reference model's (same alpha/n convention).
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if use_lrn else nn.Identity()

        self.conv1 = _conv(in_chans, 64, 7, norm_layer, stride=2)  # (B, 64, 112, 112)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # (B, 64, 56, 56)
        self.lrn1 = lrn_layer()
        self.conv2 = _conv(64, 64, 1, norm_layer)
        self.conv3 = _conv(64, 192, 3, norm_layer)
        self.lrn2 = lrn_layer()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # (B, 192, 28, 28)
        m = GOOGLENET_MODULES
        self.inception3a = InceptionModule(192, *m["3a"], norm_layer=norm_layer)
        self.inception3b = InceptionModule(256, *m["3b"], norm_layer=norm_layer)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # (B, 480, 14, 14)
        self.inception4a = InceptionModule(480, *m["4a"], norm_layer=norm_layer)
        self.inception4b = InceptionModule(512, *m["4b"], norm_layer=norm_layer)
        self.inception4c = InceptionModule(512, *m["4c"], norm_layer=norm_layer)
        self.inception4d = InceptionModule(512, *m["4d"], norm_layer=norm_layer)
        self.inception4e = InceptionModule(528, *m["4e"], norm_layer=norm_layer)
        self.maxpool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # (B, 832, 7, 7)
        self.inception5a = InceptionModule(832, *m["5a"], norm_layer=norm_layer)
        self.inception5b = InceptionModule(832, *m["5b"], norm_layer=norm_layer)
        self.aux1 = (InceptionAux(512, num_classes, norm_layer=norm_layer, drop_rate=aux_drop_rate)
                     if aux_logits else None)
        self.aux2 = (InceptionAux(528, num_classes, norm_layer=norm_layer, drop_rate=aux_drop_rate)
                     if aux_logits else None)
        self.num_features = 1024
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        init_cnn_(self)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = self._new_classifier(num_classes, in_features=1024)

    def _trunk(self, x: torch.Tensor, *, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last map and, with ``with_aux``, the two auxiliary heads' outputs."""
        check_image_input(x, in_chans=self.in_chans, min_size=self.MIN_SIZE, model="GoogLeNet")
        aux: list[torch.Tensor] = []
        x = self.lrn1(self.maxpool1(self.conv1(x)))
        x = self.maxpool2(self.lrn2(self.conv3(self.conv2(x))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)  # (B, 512, H/16, W/16)
        if with_aux:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (B, 528, H/16, W/16)
        if with_aux:
            aux.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))
        return self.inception5b(self.inception5a(x)), aux  # (B, 1024, H/32, W/32)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.global_pool(x).flatten(1))  # (B, 1024)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with_aux = self.training and self.aux1 is not None and self.aux2 is not None
        x, aux = self._trunk(x, with_aux=with_aux)
        logits = self.forward_head(x)
        return (logits, *aux) if with_aux else logits  # type: ignore[return-value]


@register_model(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=GoogLeNet.MIN_SIZE)
def googlenet(*, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = False, norm_layer: NormLayer = "batch",
              lrn: bool | None = None, drop_rate: float = 0.4) -> GoogLeNet:
    """GoogLeNet (Inception v1) with batch norm: 7,005,832 parameters (13,385,816 with ``aux_logits=True``)."""
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, aux_logits=aux_logits, norm_layer=norm_layer,
                     lrn=lrn, drop_rate=drop_rate)
