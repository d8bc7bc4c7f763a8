"""Patch-whitening convolution: a first layer initialised from the data so its outputs are decorrelated.

Coates, Lee & Ng (2011, "An analysis of single-layer networks in unsupervised feature learning") found
whitening the image patches to be one of the choices that matter most for the features a single layer learns;
Keller Jordan's airbench ("94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498) uses it, on 2x2
patches of 5,000 training images, as the frozen first layer of its fast CIFAR-10 network. For ``k x k``
patches ``p`` of the ``C``-channel input (``d = C k^2`` numbers each), with
mean ``mu`` and covariance ``Sigma = E[(p - mu)(p - mu)^T] = V diag(lambda) V^T`` (eigen-decomposition),

    W = diag(lambda + eps)^(-1/2) V^T          (d, d): rows are the scaled eigenvectors,
    z = W (p - mu)                             Cov(z) = diag(lambda / (lambda + eps)) ~ I,

so a convolution with weight ``W`` (reshaped to ``(d, C, k, k)``) and bias ``-W mu`` maps every patch to
zero-mean, unit-variance, decorrelated channels (PCA whitening). :class:`PatchWhitening` holds ``W`` and its
negation, ``2d`` output channels as in airbench, so that a following GELU/ReLU keeps the information of both
signs. The weight is frozen (``requires_grad=False``); the bias stays trainable.

``tests/test_airbench.py`` checks the law: after :meth:`PatchWhitening.init_from_data`, the first ``d``
output channels over the same images have mean 0 and identity covariance. What it is worth here is measured
by the ablation mode of ``benchmarks/cifar10_speedrun.py`` (docs/speedrun.md); so far only at a 14-step budget
with one seed, where a random frozen stem instead scored 2.8 points lower (within seed noise there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["patch_statistics", "whitening_weights", "PatchWhitening"]


def patch_statistics(x: torch.Tensor, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and covariance ``(d, d)`` of all ``kernel_size x kernel_size`` patches (stride 1, no
    padding) of images ``x`` ``(B, C, H, W)``, with ``d = C k^2`` in the order of a conv weight ``(C, k, k)``."""
    cols = F.unfold(x.double(), kernel_size)  # (B, C*k*k, L): one column per patch position
    patches = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B*L, d)
    mean = patches.mean(0)  # (d,)
    centred = patches - mean
    cov = centred.T @ centred / patches.shape[0]  # (d, d)
    return mean, cov


def whitening_weights(mean: torch.Tensor, cov: torch.Tensor, *, eps: float = 5e-4) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
    """``(W, b)`` with ``W = diag(lambda + eps)^(-1/2) V^T`` ``(d, d)`` and ``b = -W mu`` ``(d,)`` (module
    docstring); rows sorted by decreasing eigenvalue (the strongest directions first)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0.0), eigenvectors.flip(1)
    weight = eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]  # (d, d)
    return weight, -weight @ mean


class PatchWhitening(nn.Conv2d):
    """A ``k x k`` convolution (no padding) from ``in_chans`` to ``2 C k^2`` channels: ``[W; -W]`` after
    :meth:`init_from_data`, frozen; the bias ``[b; -b]`` trains. Before initialisation it is a random conv
    (the default init of ``nn.Conv2d``), so a model holding it works without data."""

    def __init__(self, in_chans: int = 3, *, kernel_size: int = 2, eps: float = 5e-4) -> None:
        dim = in_chans * kernel_size * kernel_size
        super().__init__(in_chans, 2 * dim, kernel_size, padding=0, bias=True)
        self.dim, self.eps = dim, eps
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Set the weight and bias from the patches of images ``x`` ``(B, C, H, W)`` (normalised as the model
        will see them; airbench uses 5,000 training images)."""
        mean, cov = patch_statistics(x.float(), self.kernel_size[0])
        weight, bias = whitening_weights(mean, cov, eps=self.eps)
        shape = (self.dim, self.in_channels, *self.kernel_size)
        self.weight.copy_(torch.cat([weight, -weight]).view(2 * self.dim, *shape[1:]).to(self.weight.dtype))
        self.bias.copy_(torch.cat([bias, -bias]).to(self.bias.dtype))
