"""AlexNet (Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks", NeurIPS 2012).

Five conv layers (96 11x11/4, 256 5x5, 384 3x3, 384 3x3, 256 3x3) with ReLU, local response normalisation
after the first two, overlapping 3x3/2 max-pooling, then FC 4096-4096-classes with dropout 0.5. The paper
split the net over two GPUs: conv2, conv4 and conv5 only see the half of the previous layer's channels
on their own GPU, which is a **group convolution** with 2 groups (``grouped=True``, the default) - the
origin of the trick ResNeXt later turned into "cardinality".

Local response normalisation (Sec. 3.3) divides each activation by the energy of its ``n = 5`` channel
neighbours: ``b_i = a_i / (k + alpha * sum_j a_j^2)^beta`` with k = 2, alpha = 1e-4, beta = 0.75.
PyTorch's ``LocalResponseNorm`` uses ``alpha / n`` in that sum, so we pass alpha = 5e-4 to reproduce the
paper's equation. The paper credits it with 1.4 points of top-1 error; BN replaced it in later nets.

Input: the paper says 224x224 but 227x227 is what makes the 11x11/4 conv give 55x55 maps; any size from
67 px works, since an adaptive average pool to 6x6 precedes the classifier (as torchvision).

Parameters at 1000 classes: 60,965,224 (tested; the paper: "60 million"; the Caffe reference model has
the same 60,965,224). Without groups (``grouped=False``): 62,378,344. MACs at 227: 0.72 G.

Weight init: Kaiming normal (fan-in, ReLU gain) and zero biases by default. ``init="paper"`` gives the
paper's N(0, 0.01) weights with biases 1 in conv2, conv4, conv5 and the FC layers (positive inputs keep
the ReLUs active early in training, Sec. 5) and 0 elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model
from dltricks.models.vgg import linear_no_init

PAPER = "Krizhevsky et al., ImageNet Classification with Deep Convolutional Neural Networks, NeurIPS 2012"

__all__ = ["AlexNet"]


class AlexNet(ClassifierMixin, nn.Module):
    """The 2012 AlexNet with optional two-group convolutions and LRN.

    Classifier interface (:mod:`dltricks.models._classifier`): ``forward_features`` is the last conv map,
    ``forward_head`` pools to 6x6 and runs the FC stack; the pre-logit features are the 4096 outputs of
    the second hidden FC layer, and ``get_classifier()`` is ``classifier.6``.
    """

    head_attr = "classifier.6"
    MIN_SIZE = 67  # 11x11/4 conv and three 3x3/2 pools must leave at least one pixel

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, grouped: bool = True, lrn: bool = True,
                 drop_rate: float = 0.5, init: str = "kaiming") -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        self.num_features, self.head_hidden_size = 256, 4096
        groups = 2 if grouped else 1

        def norm() -> nn.Module:
            return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0) if lrn else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 96, 11, stride=4), nn.ReLU(inplace=True), norm(),  # (B, 96, 55, 55) at 227
            nn.MaxPool2d(3, stride=2),  # (B, 96, 27, 27)
            nn.Conv2d(96, 256, 5, padding=2, groups=groups), nn.ReLU(inplace=True), norm(),
            nn.MaxPool2d(3, stride=2),  # (B, 256, 13, 13)
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),  # full connectivity across the GPUs
            nn.Conv2d(384, 384, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),  # (B, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate), linear_no_init(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate), linear_no_init(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity(),
        )
        self.init_weights(init)

    def init_weights(self, init: str = "kaiming") -> None:
        if init not in ("kaiming", "paper"):
            raise ValueError(f"init must be 'kaiming' or 'paper', got {init!r}")
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for i, m in enumerate(layers):
            if init == "kaiming":
                if m is self.classifier[6]:  # the last layer (absent when num_classes == 0)
                    nn.init.normal_(m.weight, 0, 0.01)
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            else:
                nn.init.normal_(m.weight, 0, 0.01)
                # Biases 1 in conv2, conv4, conv5 and all FC layers (indices 1, 3, 4 and 5-7).
                nn.init.constant_(m.bias, 1.0 if i in (1, 3, 4, 5, 6, 7) else 0.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.MIN_SIZE, model="AlexNet")
        return self.features(x)  # (B, 256, 6, 6) at 227 px

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x).flatten(1)  # (B, 9216)
        x = self.classifier[:6](x)  # dropout, FC 4096, ReLU, dropout, FC 4096, ReLU: (B, 4096)
        return x if pre_logits else self.classifier[6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(paper=PAPER, input_size=(3, 227, 227), test_input_size=(3, 67, 67), min_input_size=67)
def alexnet(*, num_classes: int = 1000, in_chans: int = 3, grouped: bool = True, lrn: bool = True,
            drop_rate: float = 0.5, init: str = "kaiming") -> AlexNet:
    """AlexNet as in the paper (two groups, LRN): 60,965,224 parameters at 1000 classes."""
    return AlexNet(num_classes=num_classes, in_chans=in_chans, grouped=grouped, lrn=lrn, drop_rate=drop_rate,
                   init=init)
