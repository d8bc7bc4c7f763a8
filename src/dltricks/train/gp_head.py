"""Fit a variational GP head (:class:`dltricks.layers.gp_head.GPHead`) on the frozen features of a classifier.

The features are the classifier's pre-logit vectors, ``forward_head(forward_features(x), pre_logits=True)``
(the classifier contract of :mod:`dltricks.models._classifier`), computed once in eval mode without gradients:
the network stays frozen. The head is then trained by :func:`dltricks.train.fit` like any model, on a task
whose inputs are those features and whose loss is the head's negative ELBO (:meth:`GPHead.elbo_loss`); no
second training loop. Adam at a constant learning rate (0.05 by default), no weight decay (the KL term of the
ELBO is the regulariser of the variational parameters).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dltricks.data.sequence_tasks import TensorPairLoader
from dltricks.errors import ConfigError
from dltricks.layers.gp_head import GPHead
from dltricks.tasks.base import Task, classification_metrics
from dltricks.train.recipe import load_recipe
from dltricks.train.trainer import fit

__all__ = ["pre_logit_features", "check_feature_model", "fit_gp_head", "gp_head_probs"]


def check_feature_model(model: nn.Module, name: str | None = None) -> None:
    """A GP head needs pre-logit features: ``forward_features`` and ``forward_head(..., pre_logits=True)``."""
    if not (callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))):
        raise ConfigError(f"a GP head needs the pre-logit features of the classifier, and model "
                          f"{name or type(model).__name__} has no forward_features/forward_head; use a registered "
                          "classifier (dltricks models) or another uncertainty method")


@torch.no_grad()
def pre_logit_features(model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]]) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """``(features (N, D), labels (N,))`` of the batches, the model in eval mode."""
    check_feature_model(model)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    feats, labels = [], []
    try:
        for x, y in batches:
            z = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
            feats.append(z.flatten(1).float().cpu())  # (B, D)
            labels.append((y.argmax(1) if y.dim() == 2 else y).cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def fit_gp_head(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int, num_inducing: int = 64,
                epochs: int = 10, lr: float = 0.05, batch_size: int = 256, seed: int = 0) -> GPHead:
    """A :class:`GPHead` trained by :func:`fit` on ``features (N, D)`` and ``labels (N,)`` (negative ELBO)."""
    if features.dim() != 2 or len(features) != len(labels):
        raise ConfigError(f"fit_gp_head: expected features (N, D) and N labels, got {tuple(features.shape)} and "
                          f"{tuple(labels.shape)}")
    if epochs < 1:
        raise ConfigError(f"GP head epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    head = GPHead(features, num_classes=num_classes, num_inducing=num_inducing, seed=seed)
    batch_size = min(batch_size, len(features))
    task = Task(name="gp-head-features", num_classes=num_classes, input_shape=(features.shape[1],),
                train_loader=TensorPairLoader(features, labels.long(), batch_size=batch_size, shuffle=True, seed=seed),
                val_loader=None, loss=head.elbo_loss, batch_metrics=classification_metrics)
    recipe = load_recipe({"optim": {"name": "adam", "lr": lr, "weight_decay": 0.0}, "schedule": {"name": "constant"},
                          "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed, "device": "cpu",
                                    "channels_last": False},
                          "checkpoint": {"every_epochs": 0, "keep_best": False}})
    with torch.enable_grad():
        return fit(head, task, recipe, progress=False).model.eval()


def gp_head_probs(model: nn.Module, head: GPHead, batches: Iterable[tuple[Any, torch.Tensor]], *,
                  samples: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs (N, K), labels (N,))``: the GP head's predictive mean over ``samples`` draws, on the frozen
    pre-logit features of ``model``."""
    features, labels = pre_logit_features(model, batches)
    return head.predict_probs(features, samples=samples, seed=seed), labels
