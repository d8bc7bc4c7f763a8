"""Random Fourier features and the Laplace posterior of a linear layer on them: the output layer of SNGP.

Random features (Rahimi & Recht, NeurIPS 2007). For an RBF kernel ``k(x, y) = exp(-|x - y|^2 / (2 l^2))``,
Bochner's theorem writes ``k`` as an expectation over frequencies ``w ~ N(0, I / l^2)`` and phases
``b ~ U(0, 2 pi)``; ``D`` fixed draws give the feature map

    phi(x) = sqrt(2 / D) cos(W x + b),        phi(x)^T phi(y) -> k(x, y) as D grows (error ~ 1 / sqrt(D)),

so a linear layer ``logits = phi(h) beta`` with ``beta ~ N(0, I)`` is a Gaussian process with (approximately)
that kernel. ``W`` and ``b`` are fixed buffers, never trained.

Laplace posterior (Liu et al., NeurIPS 2020, "Simple and principled uncertainty estimation with deterministic
deep learning via distance awareness", eq. 9). At the trained ``beta`` the posterior precision of the
prior-``N(0, I)`` output weights is the identity plus the Hessian of the negative log-likelihood:

    Sigma^-1 = I + sum_i w_i phi_i phi_i^T,        w_i = p_i (1 - p_i),

one ``(D, D)`` matrix shared by the classes, with ``p_i`` the softmax probability of the predicted class (the
paper's multi-class approximation; one matrix instead of ``K``). The sum runs over the training samples seen
in training mode since the last evaluation pass (a pass in eval mode clears it before the next training
step), so after :func:`dltricks.train.fit` with the usual per-epoch validation it holds the last epoch, as in
the paper's Algorithm 1. At test time each input gets the predictive variance ``s^2 = phi^T Sigma phi`` and
the mean-field logits (Lu et al. 2020's approximation of the expected softmax)

    logits_mf = logits / sqrt(1 + (pi / 8) s^2),

which shrink toward uniform far from the training data, where ``s^2`` approaches the prior variance 1.
Tests (tests/test_gp_uncertainty.py): the feature map's kernel vs the exact RBF kernel on random inputs; the
precision update vs the brute-force sum of rank-one terms.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RandomFourierFeatures", "LaplacePrecision", "rbf_kernel", "mean_field_logits"]


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, *, lengthscale: float) -> torch.Tensor:
    """The exact RBF kernel matrix ``exp(-|x_i - y_j|^2 / (2 l^2))`` of ``x (N, D)`` and ``y (M, D)``: (N, M)."""
    return torch.exp(-torch.cdist(x, y).square() / (2.0 * lengthscale ** 2))


class RandomFourierFeatures(nn.Module):
    """``phi(x) = sqrt(2 / D) cos(x W^T + b)`` with fixed ``W ~ N(0, 1 / l^2)`` of shape (D, in) and
    ``b ~ U(0, 2 pi)``: ``phi(x)^T phi(y)`` approximates the RBF kernel of lengthscale ``l``."""

    def __init__(self, in_features: int, num_features: int, *, lengthscale: float = 1.0) -> None:
        super().__init__()
        if in_features < 1 or num_features < 1:
            raise ValueError(f"random features need in_features >= 1 and num_features >= 1, got {in_features} and "
                             f"{num_features}")
        if lengthscale <= 0:
            raise ValueError(f"lengthscale must be > 0, got {lengthscale}")
        self.in_features, self.num_features, self.lengthscale = in_features, num_features, lengthscale
        self.register_buffer("weight", torch.randn(num_features, in_features) / lengthscale)
        self.register_buffer("bias", torch.rand(num_features) * 2.0 * math.pi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0 / self.num_features) * torch.cos(x @ self.weight.T + self.bias)  # (B, D)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.num_features}, lengthscale={self.lengthscale}"


class LaplacePrecision(nn.Module):
    """The Laplace precision ``I + sum_i p_i (1 - p_i) phi_i phi_i^T`` of the output weights (a buffer, so it is
    saved with the weights), its inverse and the mean-field logits.

    :meth:`update` adds a training batch (called by the model in training mode); the first update after a
    forward pass in eval mode starts the sum again from the identity (see the module docstring)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("precision", torch.eye(num_features))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self._restart = False

    def reset(self) -> None:
        self.precision.copy_(torch.eye(self.precision.shape[0], device=self.precision.device))
        self.count.zero_()
        self._restart = False

    def mark_evaluated(self) -> None:
        """An eval-mode pass happened: the next training update starts a fresh sum."""
        self._restart = True

    @torch.no_grad()
    def update(self, phi: torch.Tensor, logits: torch.Tensor) -> None:
        """Add ``sum_i p_i (1 - p_i) phi_i phi_i^T`` of a batch, ``p_i`` the max softmax probability."""
        if self._restart:
            self.reset()
        p = logits.detach().float().softmax(1).max(1).values  # (B,)
        scaled = phi.detach().float() * (p * (1.0 - p)).sqrt().unsqueeze(1)  # (B, D): sqrt(w_i) phi_i
        self.precision.add_(scaled.T @ scaled)  # (D, D)
        self.count.add_(phi.shape[0])

    def variance(self, phi: torch.Tensor) -> torch.Tensor:
        """Predictive variance ``phi_i^T Sigma phi_i`` of each row of ``phi (B, D)``: (B,)."""
        chol = torch.linalg.cholesky(self.precision.float())
        # phi^T Sigma phi = |L^-1 phi|^2 with Sigma^-1 = L L^T.
        half = torch.linalg.solve_triangular(chol, phi.float().T, upper=False)  # (D, B)
        return half.square().sum(0)


def mean_field_logits(logits: torch.Tensor, variance: torch.Tensor, *, factor: float = math.pi / 8) -> torch.Tensor:
    """``logits / sqrt(1 + factor * variance)`` (variance per input, (B,)): the mean-field approximation of
    ``E[softmax(f)]`` for ``f ~ N(logits, variance)``; the arg-max never changes."""
    return logits / torch.sqrt(1.0 + factor * variance).unsqueeze(1)  # (B, K)
