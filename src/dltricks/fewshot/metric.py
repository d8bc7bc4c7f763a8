"""Metric-learning few-shot classifiers besides prototypes: matching networks and Siamese networks.

Both embed images with an encoder f, are trained with :func:`dltricks.train.fit` on episodes of the training
classes (:func:`episodic_task`), and classify the queries of an unseen episode by comparing embeddings:

* **Matching networks** (Vinyals et al. 2016, "Matching networks for one shot learning", eq. 1-2) label a
  query by attention over the support set, p(y = n | x) = sum_{i: y_i = n} a(x, x_i) with
  a(x, x_i) = softmax_i( s * cos(f(x), f(x_i)) ). We train the negative log of that probability and leave out
  the paper's full-context embeddings (the LSTMs that read the whole support set). The paper's cosine has no
  scale s; a fixed s = 10 (``scale``) lets the softmax become confident, as later re-implementations do.
* **Siamese networks** with the contrastive loss (Hadsell et al. 2006, eq. 4) pull embeddings of the same
  class together and push other classes beyond a margin m: for a pair at distance D, the loss is D^2 / 2 if
  the classes match, max(0, m - D)^2 / 2 otherwise. Every pair of images of a training episode is used, the
  positive and the negative pairs averaged apart (a 5-way episode has four times more negative pairs). The
  embeddings are L2-normalised, so D is in [0, 2] and m = 1. A query takes the class of its nearest support
  image (Koch et al. 2015 score pairs the same way for one-shot verification).

Measured (docs/fewshot.md): with ``small_cnn`` (16, 32, 64) trained on 300 episodes of MNIST digits 0-4, 5-way
1-shot accuracy on digits 5-9 over 600 episodes is 52.4 % +- 0.8 (matching) and 51.6 % +- 0.8 (Siamese),
against 57.8 % +- 0.8 for the prototypical network (seed 0); over seeds 0-2 the means are 55.4 % +- 2.9,
53.9 % +- 2.0 and 57.9 % +- 1.5 (+- the std over seeds). The tip ``learn.prototypical-vs-siamese``
(MLP, 5 seeds) finds prototypes ahead by 3.8 points, 95 % interval [1.7, 5.9].
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError
from dltricks.fewshot.episodes import (Episode, EpisodeLoader, EpisodeSampler, _as_float, _episode_logits,
                                       prototypical_loss)
from dltricks.tasks.base import Task
from dltricks.train import fit
from dltricks.train.recipe import load_recipe

__all__ = ["matching_scores", "matching_logits", "nearest_neighbour_logits", "contrastive_loss", "matching_loss",
           "episodic_task", "train_episodic", "EPISODIC_METHODS"]

EPISODIC_METHODS = ("prototypical", "matching", "siamese")
MATCHING_SCALE = 10.0
MARGIN = 1.0


def matching_scores(z_support: torch.Tensor, y_support: torch.Tensor, z_query: torch.Tensor, ways: int, *,
                    scale: float = MATCHING_SCALE) -> torch.Tensor:
    """``(Q, N)`` log p(y = n | query): attention over the support set by scaled cosine similarity."""
    cos = F.normalize(z_query, dim=-1) @ F.normalize(z_support, dim=-1).T  # (Q, S)
    attention = torch.softmax(scale * cos, dim=1)  # (Q, S): a(x, x_i)
    one_hot = F.one_hot(y_support, ways).to(attention.dtype)  # (S, N)
    return (attention @ one_hot).clamp_min(1e-12).log()  # (Q, N): sum over the support images of class n


def _split(encoder: nn.Module, episode: Episode) -> tuple[torch.Tensor, torch.Tensor, int]:
    ways = int(episode.support_y.max()) + 1
    return encoder(_as_float(episode.support)), encoder(_as_float(episode.query)), ways  # (N*K, D), (N*Q, D)


def matching_logits(encoder: nn.Module, episode: Episode) -> torch.Tensor:
    """``(N*Q, N)`` matching-network log-probabilities of an episode's queries."""
    z_support, z_query, ways = _split(encoder, episode)
    return matching_scores(z_support, episode.support_y, z_query, ways)


def nearest_neighbour_logits(encoder: nn.Module, episode: Episode) -> torch.Tensor:
    """``(N*Q, N)``: minus the squared distance of each query to the nearest support image of each class
    (L2-normalised embeddings, as the Siamese network is trained)."""
    z_support, z_query, ways = _split(encoder, episode)
    d2 = torch.cdist(F.normalize(z_query, dim=-1), F.normalize(z_support, dim=-1)).pow(2)  # (N*Q, N*K)
    return -d2.reshape(len(z_query), ways, -1).amin(2)  # (N*Q, N): class-major support order


def contrastive_loss(output: torch.Tensor, target: torch.Tensor, *, margin: float = MARGIN,
                     **_: object) -> torch.Tensor:
    """Hadsell et al.'s contrastive loss over every pair of an episode batch (``target[:, 0]`` the labels);
    the mean over positive pairs plus the mean over negative pairs."""
    z = F.normalize(output.float(), dim=-1)
    labels = target[:, 0] if target.dim() == 2 else target
    d = torch.cdist(z, z)  # (B, B)
    pairs = torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)
    same = (labels[:, None] == labels[None, :]) & pairs
    other = (labels[:, None] != labels[None, :]) & pairs
    positive = 0.5 * d[same].pow(2).mean() if same.any() else d.new_zeros(())
    negative = 0.5 * (margin - d[other]).clamp_min(0).pow(2).mean() if other.any() else d.new_zeros(())
    return positive + negative


def matching_loss(output: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0,
                  **_: object) -> torch.Tensor:
    """Negative log-likelihood of the queries under the matching network's attention."""
    support = target[:, 1] == 0
    ways = int(target[support, 0].max()) + 1
    z = output.float()
    log_p = matching_scores(z[support], target[support, 0], z[~support], ways)
    return F.nll_loss(log_p, target[~support, 0])


def _metrics_for(method: str):
    def metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        z = output.float()
        support = target[:, 1] == 0
        ways = int(target[support, 0].max()) + 1
        if method == "matching":
            scores = matching_scores(z[support], target[support, 0], z[~support], ways)
        elif method == "siamese":
            d2 = torch.cdist(F.normalize(z[~support], dim=-1), F.normalize(z[support], dim=-1)).pow(2)
            scores = -d2.reshape(int((~support).sum()), ways, -1).amin(2)
        else:
            scores = _episode_logits(z, target)[0]
        labels = target[~support, 0]
        loss = {"prototypical": prototypical_loss, "matching": matching_loss,
                "siamese": contrastive_loss}[method](output, target).item() * labels.numel()
        return {"loss": loss, "correct": float((scores.argmax(1) == labels).sum()), "count": float(labels.numel())}

    return metrics


def episodic_task(sampler: EpisodeSampler, *, method: Literal["prototypical", "matching", "siamese"] = "prototypical",
                  episodes_per_period: int = 1) -> Task:
    """A training task of episodes scored by the loss of ``method``; the accuracy counts the queries that
    the method's own classifier gets right."""
    if method not in EPISODIC_METHODS:
        raise ConfigError(f"method: expected one of {', '.join(EPISODIC_METHODS)}, got {method!r}")
    loss = {"prototypical": prototypical_loss, "matching": matching_loss, "siamese": contrastive_loss}[method]
    return Task(name=f"episodes-{method}", train_loader=EpisodeLoader(sampler, episodes_per_period=episodes_per_period),
                val_loader=None, num_classes=sampler.ways, loss=loss, batch_metrics=_metrics_for(method),
                input_shape=tuple(sampler.images.shape[1:]), extra={"output": "embedding"})


def train_episodic(encoder: nn.Module, sampler: EpisodeSampler, *, method: str = "prototypical",
                   episodes: int = 200, lr: float = 1e-3) -> list[float]:
    """Train ``encoder`` with ``method``'s loss on ``episodes`` episodes (Adam, through :func:`fit`)."""
    recipe = load_recipe({"optim": {"name": "adam", "lr": lr}, "schedule": {"name": "constant"},
                          "train": {"steps": episodes, "device": "cpu", "channels_last": False}})
    result = fit(encoder, episodic_task(sampler, method=method), recipe, progress=False)  # type: ignore[arg-type]
    return [record["train_loss"] for record in result.history]
