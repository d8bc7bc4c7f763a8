"""LeNet-5 (LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998).

Input 32x32 (MNIST's 28x28 digits padded by 2): C1 6@5x5 -> S2 pool -> C3 16@5x5 -> S4 pool ->
C5 120 -> F6 84 -> 10 outputs. We use full C3 connectivity, average pooling without the trainable
subsampling coefficients, tanh activations and a linear output layer instead of the paper's RBF units
(the usual modern reading). Parameter count for 10 classes: 61,706 (the paper's sparse C3 table and
trainable pooling give about 60,000).
"""

from __future__ import annotations

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "LeCun et al., Gradient-based learning applied to document recognition, Proc. IEEE 1998"


class LeNet5(ClassifierMixin, nn.Module):
    """LeNet-5; ``forward_features`` is the (B, 16, 5, 5) map of S4, ``forward_head`` flattens it and runs
    C5 and F6 (the 84 pre-logit features) and the output layer ``classifier.5``."""

    head_attr = "classifier.5"

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, pad_input: bool = True) -> None:
        super().__init__()
        self.in_chans, self.min_size = in_chans, 28 if pad_input else 32
        self.num_classes, self.num_features, self.head_hidden_size = num_classes, 16, 84
        # MNIST digits are 28x28; the paper feeds 32x32 so that strokes reach the receptive-field centre
        # of the top feature detectors. padding=2 on C1 does the same for 28x28 inputs.
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2 if pad_input else 0), nn.Tanh(), nn.AvgPool2d(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),  # (B, 16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 400)
            nn.Linear(16 * 5 * 5, 120), nn.Tanh(),
            nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, num_classes) if num_classes > 0 else nn.Identity(),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="LeNet-5")
        features = self.features(x)
        if features.shape[-2:] != (5, 5):
            raise ValueError(f"LeNet-5 expects 28x28 inputs (or 32x32 with pad_input=False), got {tuple(x.shape[-2:])}")
        return features  # (B, 16, 5, 5)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[:5](x)  # flatten, C5 (120), tanh, F6 (84), tanh: (B, 84)
        return x if pre_logits else self.classifier[5](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 28, 28), test_input_size=(1, 28, 28), min_input_size=28,
                paper=PAPER)
def lenet5(*, num_classes: int = 10, in_chans: int = 1, pad_input: bool = True) -> LeNet5:
    """LeNet-5 for 28x28 digits: 61,706 parameters at 10 classes."""
    return LeNet5(num_classes=num_classes, in_chans=in_chans, pad_input=pad_input)
