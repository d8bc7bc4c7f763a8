"""Small models the trainer, tests and quick experiments need.

* ``mlp``: a multi-layer perceptron on flattened pixels (the baseline every tip is measured against).
* ``small_cnn``: a small conv-BN-ReLU network (Ioffe & Szegedy 2015 batch norm after each conv),
  sized for 28x28 and 32x32 images; it reaches about 99 % MNIST test accuracy in one epoch.
* ``mnist_example_cnn``: the network of the PyTorch examples MNIST script (conv32-conv64-maxpool-dropout-
  fc128-dropout-fc10, 1.2 M parameters), the baseline of ``benchmarks/mnist_speedrun.py``.
* ``speedrun_cnn``: three conv-BN-ReLU-maxpool stages (16-32-64 channels, 1.9 M multiply-adds per
  28x28 image, 6x fewer than ``mnist_example_cnn``) for fast MNIST training on CPUs.

All four have the classifier interface of :mod:`dltricks.models._classifier` (``forward_features``,
``forward_head``, ``get_classifier``, ``reset_classifier``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model


class MLP(ClassifierMixin, nn.Module):
    """Flatten -> [Linear -> act -> dropout] x len(hidden) -> Linear.

    The input size is fixed at construction (``in_chans * img_size**2``); a different input raises
    a clear error instead of a shape mismatch deep inside ``F.linear``. ``forward_features`` is the
    output of the last hidden layer (B, hidden[-1]); ``get_classifier()`` is ``head``.
    """

    head_attr = "head"

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                 hidden: Sequence[int] = (256, 128), act_layer: Callable[[], nn.Module] = nn.ReLU,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
        layers: list[nn.Module] = []
        width = in_chans * img_size * img_size
        for h in hidden:
            layers += [nn.Linear(width, h), act_layer(), nn.Dropout(drop_rate)]
            width = h
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"MLP expects input (B, {self.in_chans}, {self.img_size}, {self.img_size}) of exactly "
                             f"{self.img_size}x{self.img_size} pixels, got {tuple(x.shape)}; "
                             "build it with in_chans=/img_size= to match")
        x = x.flatten(1)  # (B, C*H*W)
        return self.features(x)  # (B, hidden[-1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SmallCNN(ClassifierMixin, nn.Module):
    """Three conv-BN-ReLU stages with max-pooling, then global average pooling and a linear head.

    ``widths=(32, 64, 128)`` gives 0.29 M parameters.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128),
                 norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d, drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for i, c_out in enumerate(widths):
            for j in range(2 if i > 0 else 1):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm_layer is None)]
                if norm_layer is not None:
                    layers.append(norm_layer(c_out))
                layers.append(nn.ReLU(inplace=True))
                c_in = c_out
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.in_chans, self.min_size = in_chans, 2 ** (len(widths) - 1)
        self.num_classes, self.num_features = num_classes, c_in
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c_in, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="SmallCNN")
        return self.features(x)  # (B, C, H/4, W/4)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(x).flatten(1))  # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 28, 28), test_input_size=(1, 28, 28), min_input_size=28)
def mlp(*, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, hidden: Sequence[int] = (256, 128),
        drop_rate: float = 0.0) -> MLP:
    """MLP with two hidden layers (256, 128) on 28x28 inputs: 235,146 parameters for MNIST."""
    return MLP(num_classes=num_classes, in_chans=in_chans, img_size=img_size, hidden=hidden, drop_rate=drop_rate)


@register_model(input_size=(1, 28, 28), test_input_size=(1, 28, 28), min_input_size=4)
def small_cnn(*, num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128),
              drop_rate: float = 0.0) -> SmallCNN:
    """Small BN-ReLU CNN (conv32, 2x conv64, 2x conv128, GAP, linear)."""
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, widths=widths, drop_rate=drop_rate)


class MnistExampleCNN(ClassifierMixin, nn.Module):
    """The CNN of the PyTorch examples MNIST script (``examples/mnist/main.py``).

    conv3x3(32) -> ReLU -> conv3x3(64) -> ReLU -> maxpool 2 -> dropout 0.25 -> fc 9216->128 -> ReLU ->
    dropout 0.5 -> fc 128->num_classes; 1,199,882 parameters at 10 classes. The script returns
    ``log_softmax`` and trains with NLL; we return logits and train with cross-entropy, the same loss.
    Trained with Adadelta (lr 1.0) and StepLR (gamma 0.7) it reaches about 99 % test accuracy after a
    couple of epochs (recipe ``mnist-classic``).

    ``forward_features`` is the (B, 64, 24, 24) map of conv2; ``forward_head`` pools, runs fc1 (the 128
    pre-logit features) and ``fc2``.
    """

    head_attr = "fc2"

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.num_features, self.head_hidden_size = in_chans, num_classes, 64, 128
        self.conv1 = nn.Conv2d(in_chans, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.drop1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(9216, 128)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=28, model="mnist_example_cnn")
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"mnist_example_cnn expects 28x28 input (its fc1 takes 64x12x12 features), got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        x = torch.relu(self.conv1(x))  # (B, 32, 26, 26)
        return torch.relu(self.conv2(x))  # (B, 64, 24, 24)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop1(torch.max_pool2d(x, 2)).flatten(1)  # (B, 9216)
        x = self.drop2(torch.relu(self.fc1(x)))  # (B, 128)
        return x if pre_logits else self.fc2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SpeedrunCNN(ClassifierMixin, nn.Module):
    """``len(widths)`` stages of conv3x3-BN-ReLU-maxpool2, then flatten and one linear layer.

    With ``widths=(16, 32, 64)`` on 28x28 images: 28 -> 14 -> 7 -> 3 pixels, 1.9 M multiply-adds and
    29 k parameters. Batch norm (Ioffe & Szegedy 2015) is what lets it train at the large one-cycle
    learning rates of the ``mnist-speedrun`` recipe.

    ``forward_features`` is the (B, C, s, s) map; ``forward_head`` flattens it (the C*s*s pre-logit
    features, ``head_hidden_size``) and applies ``head``.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (16, 32, 64),
                 img_size: int = 28) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_chans, img_size
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in, size = c_out, size // 2
        if size < 1:
            raise ValueError(f"speedrun_cnn: img_size {img_size} is too small for {len(widths)} stages")
        self.features = nn.Sequential(*layers)
        self.in_chans, self.img_size, self.out_size = in_chans, img_size, size
        self.num_classes, self.num_features, self.head_hidden_size = num_classes, c_in, c_in * size * size
        self.head = nn.Linear(c_in * size * size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.img_size, model="speedrun_cnn")
        H, W = x.shape[-2:]
        x = self.features(x)  # (B, C, s, s)
        if x.shape[-2:] != (self.out_size, self.out_size):
            raise ValueError(f"speedrun_cnn was built for {self.img_size}x{self.img_size} input, got {H}x{W}; "
                             f"build it with img_size={H}")
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)  # (B, C*s*s)
        return x if pre_logits else self.head(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 28, 28), test_input_size=(1, 28, 28), min_input_size=28)
def mnist_example_cnn(*, num_classes: int = 10, in_chans: int = 1) -> MnistExampleCNN:
    """PyTorch examples MNIST CNN (conv32-conv64-maxpool-dropout-fc128-dropout-fc10): 1,199,882 parameters."""
    return MnistExampleCNN(num_classes=num_classes, in_chans=in_chans)


@register_model(input_size=(1, 28, 28), test_input_size=(1, 28, 28), min_input_size=28)
def speedrun_cnn(*, num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (16, 32, 64),
                 img_size: int = 28) -> SpeedrunCNN:
    """Three conv-BN-ReLU-maxpool stages (16-32-64) + linear: 29 k parameters, fast MNIST training on CPU."""
    return SpeedrunCNN(num_classes=num_classes, in_chans=in_chans, widths=widths, img_size=img_size)
