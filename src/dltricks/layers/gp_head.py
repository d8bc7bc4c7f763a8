"""A variational Gaussian-process classification head on fixed features (GPyTorch).

Sparse variational GP classification (Hensman, Matthews & Ghahramani, AISTATS 2015), with GPyTorch
(Gardner et al., NeurIPS 2018), the maintained library for scalable GPs. One latent function per class,
``f_k ~ GP(m_k, s_k^2 k_RBF)``, each summarised by ``M`` inducing points ``Z_k`` and a Gaussian
``q(u_k) = N(mu_k, S_k)`` over its values there (``VariationalStrategy`` with a Cholesky-parametrised
``S_k``; the ``K`` functions are a batch of independent GPs, ``IndependentMultitaskVariationalStrategy``).
The likelihood is ``p(y | f) = softmax(f)_y`` (GPyTorch's ``SoftmaxLikelihood`` without mixing weights):
the multi-class likelihood GPyTorch documents for variational classification. It is not conjugate, so
there is no closed-form posterior and the head is fitted by maximising the evidence lower bound

    ELBO = sum_i E_{q(f_i)} [log softmax(f_i)_{y_i}] - sum_k KL(q(u_k) || p(u_k)),

whose expectation GPyTorch estimates by sampling ``f_i`` (on minibatches: the first term rescaled by
``N / B``, ``VariationalELBO``). Fitting costs ``O(B M^2 + M^3)`` per step instead of the exact GP's
``O(N^3)``; the Dirichlet-label trick (Milios et al. 2018) would give an exact GP regression instead, with
that cubic cost. Features are standardised with their training mean and standard deviation; the inducing
points start at ``M`` training features drawn with a fixed seed.

Prediction: ``p(y | x) = E_{q(f)}[softmax(f)]``, a Monte Carlo mean over ``samples`` draws of ``f`` from the
predictive ``q(f(x))`` (:meth:`GPHead.predict_probs`). Far from every inducing point ``q(f(x))`` reverts to
the prior (mean ``m_k``, variance ``s_k^2``), so the predicted probabilities flatten there: the head's reason
to know what it does not know. Training goes through :func:`dltricks.train.fit`
(:func:`dltricks.train.gp_head.fit_gp_head`), with the negative ELBO as the task's loss.
"""

from __future__ import annotations

import gpytorch
import torch
from torch import nn

__all__ = ["GPHead"]


class _IndependentGPs(gpytorch.models.ApproximateGP):
    """``K`` independent variational GPs (batch dim first) with a constant mean and a scaled RBF kernel."""

    def __init__(self, inducing_points: torch.Tensor, num_classes: int) -> None:
        batch = torch.Size([num_classes])
        distribution = gpytorch.variational.CholeskyVariationalDistribution(inducing_points.shape[-2],
                                                                            batch_shape=batch)
        strategy = gpytorch.variational.IndependentMultitaskVariationalStrategy(
            gpytorch.variational.VariationalStrategy(self, inducing_points, distribution,
                                                     learn_inducing_locations=True),
            num_tasks=num_classes)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=batch)
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(batch_shape=batch),
                                                         batch_shape=batch)

    def forward(self, z: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


class GPHead(nn.Module):
    """A variational GP classifier on ``D``-dimensional features: ``forward(z (B, D))`` returns
    ``(f_mean (B, K), q(f))``, the predictive mean of the latent functions (used as logits for accuracy) and
    the ``MultitaskMultivariateNormal`` the ELBO needs; :meth:`elbo_loss` is the loss for ``fit``."""

    def __init__(self, train_features: torch.Tensor, *, num_classes: int, num_inducing: int = 64,
                 num_data: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if train_features.dim() != 2 or len(train_features) < 2:
            raise ValueError(f"GPHead needs training features (N >= 2, D), got {tuple(train_features.shape)}")
        if num_classes < 2 or num_inducing < 1:
            raise ValueError(f"GPHead needs num_classes >= 2 and num_inducing >= 1, got {num_classes} and "
                             f"{num_inducing}")
        features = train_features.detach().float()
        self.register_buffer("feature_mean", features.mean(0))
        self.register_buffer("feature_std", features.std(0).clamp_min(1e-6))
        z = self._standardise(features)
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(z), generator=generator)[:num_inducing]
        inducing = z[pick].unsqueeze(0).repeat(num_classes, 1, 1)  # (K, M, D)
        self.gp = _IndependentGPs(inducing, num_classes)
        # Lengthscale at the typical distance between standardised features (sqrt(2 D)).
        self.gp.covar_module.base_kernel.lengthscale = (2.0 * z.shape[1]) ** 0.5
        self.likelihood = gpytorch.likelihoods.SoftmaxLikelihood(num_features=num_classes, num_classes=num_classes,
                                                                 mixing_weights=False)
        self.num_classes, self.num_data = num_classes, num_data or len(z)

    def _standardise(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() - self.feature_mean) / self.feature_std

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, gpytorch.distributions.MultitaskMultivariateNormal]:
        f = self.gp(self._standardise(z))
        return f.mean, f  # (B, K) and q(f)

    def elbo_loss(self, out: tuple[torch.Tensor, gpytorch.distributions.MultitaskMultivariateNormal],
                  y: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        """The negative ELBO per training sample (``label_smoothing`` must be 0: the likelihood is the softmax)."""
        if label_smoothing:
            raise ValueError("the GP head's likelihood takes hard labels; label smoothing must be 0")
        elbo = gpytorch.mlls.VariationalELBO(self.likelihood, self.gp, num_data=self.num_data)
        return -elbo(out[1], y.long())

    @torch.no_grad()
    def predict_probs(self, z: torch.Tensor, *, samples: int = 64, seed: int = 0) -> torch.Tensor:
        """``E_q(f)[softmax(f)]`` by ``samples`` draws (a fixed seed, so the result is repeatable): (B, K)."""
        was_training = self.training
        self.eval()
        try:
            with torch.random.fork_rng(devices=[]), gpytorch.settings.fast_pred_var():
                torch.manual_seed(seed)
                f = self.gp(self._standardise(z)).rsample(torch.Size([samples]))  # (S, B, K)
        finally:
            self.train(was_training)
        return f.softmax(-1).mean(0)  # (B, K)
