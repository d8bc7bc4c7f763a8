"""SNGP: a spectrally normalised residual network with a random-feature Gaussian-process output layer.

Liu, Lin, Padhy, Tran, Bedrax-Weiss & Lakshminarayanan, "Simple and principled uncertainty estimation with
deterministic deep learning via distance awareness", NeurIPS 2020. Two changes make a deterministic network
distance aware:

1. **Spectral normalisation** of the hidden layers (Miyato et al. 2018, ``W / sigma_max(W)`` by power
   iteration, :func:`torch.nn.utils.parametrizations.spectral_norm`) inside residual blocks
   ``h + c * act(W h + b)`` with ``c < 1``: each block is then bi-Lipschitz,
   ``(1 - c) |h - h'| <= |g(h) - g(h')| <= (1 + c) |h - h'|``, so inputs far apart stay far apart in the
   hidden space instead of collapsing onto the training features.
2. **A GP output layer**: the last hidden vector goes through random Fourier features of an RBF kernel and a
   linear layer, with the Laplace posterior of that layer giving each input a predictive variance and
   mean-field logits at test time (:mod:`dltricks.layers.random_features`).

``sngp_mlp`` is the residual MLP of the paper's 2-D experiments, sized for 28x28 images. The kernel's
lengthscale (``gp_lengthscale=10``) is about the median distance between the 128-wide hidden vectors of an
MNIST model (we measured 11 at initialisation, 16 after one epoch): with a lengthscale of 2 every training
point sat alone in the kernel and the network trained to 12-55 % accuracy in the same epoch. With
``spectral_norm=False, gp_head=False`` it is the same network as a plain softmax classifier (the baseline of
the tip ``learn.bayesian-uncertainty``). Classifier interface (:mod:`dltricks.models._classifier`):
``forward_features`` is the last hidden vector (B, width); the pre-logit features are the random features
(B, num_random_features) for the GP head (the hidden vector for the linear head); ``get_classifier()`` is the
bias-free linear layer on them. ``forward`` gives the posterior-mean logits; ``model.mean_field = True``
(what ``dltricks eval --uncertainty sngp`` and :func:`dltricks.measure.uncertainty.sngp_probs` set) gives the
mean-field logits. Measured on MNIST: docs/uncertainty.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from dltricks.layers.random_features import LaplacePrecision, RandomFourierFeatures, mean_field_logits
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

__all__ = ["SNGPMLP", "sngp_mlp"]


class _ResidualBlock(nn.Module):
    """``h + c * act(W h + b)``, with ``W`` spectrally normalised when asked."""

    def __init__(self, width: int, *, spectral_norm: bool, bound: float, drop_rate: float) -> None:
        super().__init__()
        linear = nn.Linear(width, width)
        self.fc = _spectral_norm(linear) if spectral_norm else linear
        self.act, self.drop, self.bound = nn.ReLU(), nn.Dropout(drop_rate), bound

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.bound * self.drop(self.act(self.fc(h)))


class SNGPMLP(ClassifierMixin, nn.Module):
    """Flatten -> Linear(in, width) -> ``depth`` residual blocks -> [random features] -> Linear (no bias)."""

    head_attr = "head"
    head_bias = False

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: int = 128,
                 depth: int = 3, spectral_norm: bool = True, spec_norm_bound: float = 0.95, gp_head: bool = True,
                 num_random_features: int = 512, gp_lengthscale: float = 10.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
        stem = nn.Linear(in_chans * img_size * img_size, width)
        self.stem = _spectral_norm(stem) if spectral_norm else stem
        self.blocks = nn.Sequential(*(_ResidualBlock(width, spectral_norm=spectral_norm, bound=spec_norm_bound,
                                                     drop_rate=drop_rate) for _ in range(depth)))
        self.num_features = width
        self.gp_head, self.mean_field = gp_head, False
        if gp_head:
            self.random_features = RandomFourierFeatures(width, num_random_features, lengthscale=gp_lengthscale)
            self.laplace = LaplacePrecision(num_random_features)
            self.head_hidden_size = num_random_features
        self.head = self._new_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"sngp_mlp expects input (B, {self.in_chans}, {self.img_size}, {self.img_size}), got "
                             f"{tuple(x.shape)}; build it with in_chans=/img_size= to match")
        return self.blocks(self.stem(x.flatten(1)))  # (B, C*H*W) -> (B, width)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        phi = self.random_features(x) if self.gp_head else x  # (B, num_random_features) or (B, width)
        if pre_logits or self.num_classes == 0:
            return phi
        logits = self.head(phi)  # (B, K)
        if not self.gp_head:
            return logits
        if self.training:
            self.laplace.update(phi, logits)
            return logits
        self.laplace.mark_evaluated()
        return mean_field_logits(logits, self.laplace.variance(phi)) if self.mean_field else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 28, 28), test_input_size=(1, 28, 28), min_input_size=28,
                paper="Liu et al. 2020, Simple and principled uncertainty estimation ... distance awareness")
def sngp_mlp(*, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: int = 128, depth: int = 3,
             spectral_norm: bool = True, gp_head: bool = True, num_random_features: int = 512,
             gp_lengthscale: float = 10.0, drop_rate: float = 0.0) -> SNGPMLP:
    """SNGP residual MLP (784-128, 3 residual blocks of 128, 512 random features): 155,136 parameters for MNIST."""
    return SNGPMLP(num_classes=num_classes, in_chans=in_chans, img_size=img_size, width=width, depth=depth,
                   spectral_norm=spectral_norm, gp_head=gp_head, num_random_features=num_random_features,
                   gp_lengthscale=gp_lengthscale, drop_rate=drop_rate)
