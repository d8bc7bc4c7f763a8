"""Episodes and prototypical networks (Snell et al. 2017, "Prototypical networks for few-shot learning").

An **episode** is a small classification problem drawn from a pool of classes: N classes ("ways"), K labelled
**support** images of each ("shots") and Q unlabelled **query** images of each. Labels inside an episode are
re-numbered 0..N-1, so a model cannot memorise class identities; trained on episodes from *training* classes,
it is evaluated on episodes from classes it never saw.

A prototypical network embeds every image with a network f and represents class n by the mean embedding of
its support images, its prototype; a query is classified by its squared Euclidean distance to them:

    c_n = (1/K) sum_k f(x_{n,k}),        p(y = n | x) = softmax_n( -||f(x) - c_n||^2 )

Training minimises the cross-entropy of the queries' labels, episode after episode. Few-shot accuracy is
reported as the mean over many test episodes with a 95 % interval, mean +- 1.96 std / sqrt(episodes), as in
the few-shot literature (600 episodes or more).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError

__all__ = ["Episode", "EpisodeSampler", "prototypical_logits", "train_prototypical", "evaluate_episodes"]


@dataclass
class Episode:
    """One N-way K-shot episode: support ``(N*K, C, H, W)`` and query ``(N*Q, C, H, W)`` images with labels in
    0..N-1 (class-major order), and ``classes``, the original labels of the N ways."""

    support: torch.Tensor
    support_y: torch.Tensor
    query: torch.Tensor
    query_y: torch.Tensor
    classes: list[int]


class EpisodeSampler:
    """Draws episodes from ``images`` ``(M, C, H, W)`` with ``labels`` ``(M,)`` restricted to ``classes``.

    Every draw is reproducible from ``seed``: episode i of a sampler is the same whatever was drawn before.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, classes: list[int] | None = None,
                 ways: int = 5, shots: int = 1, queries: int = 15, seed: int = 0) -> None:
        classes = sorted(int(c) for c in (classes if classes is not None else labels.unique().tolist()))
        if ways < 2 or ways > len(classes):
            raise ConfigError(f"ways: expected 2..{len(classes)} (the classes available), got {ways}")
        self.by_class = {c: torch.nonzero(labels == c).flatten() for c in classes}
        short = [c for c, idx in self.by_class.items() if len(idx) < shots + queries]
        if short:
            raise ConfigError(f"class {short[0]} has fewer than shots + queries = {shots + queries} images")
        self.images, self.classes = images, classes
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed

    def episode(self, i: int) -> Episode:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        chosen = [self.classes[j] for j in torch.randperm(len(self.classes), generator=g)[: self.ways].tolist()]
        support, query = [], []
        for c in chosen:
            idx = self.by_class[c]
            pick = idx[torch.randperm(len(idx), generator=g)[: self.shots + self.queries]]
            support.append(pick[: self.shots])
            query.append(pick[self.shots:])
        s, q = torch.cat(support), torch.cat(query)
        ways = torch.arange(self.ways)
        return Episode(self.images[s], ways.repeat_interleave(self.shots), self.images[q],
                       ways.repeat_interleave(self.queries), chosen)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def prototypical_logits(encoder: nn.Module, episode: Episode) -> torch.Tensor:
    """``(N*Q, N)`` logits: minus the squared distance of each query embedding to each class prototype."""
    ways = int(episode.support_y.max()) + 1
    z_support = encoder(_as_float(episode.support))  # (N*K, D)
    z_query = encoder(_as_float(episode.query))  # (N*Q, D)
    prototypes = z_support.reshape(ways, -1, z_support.shape[-1]).mean(1)  # (N, D): class-major support order
    return -torch.cdist(z_query, prototypes).pow(2)  # (N*Q, N)


def train_prototypical(encoder: nn.Module, sampler: EpisodeSampler, *, episodes: int = 200, lr: float = 1e-3,
                       ) -> list[float]:
    """Train ``encoder`` on ``episodes`` episodes with Adam; returns the loss of each episode."""
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    encoder.train()
    losses = []
    for i in range(episodes):
        ep = sampler.episode(i)
        loss = F.cross_entropy(prototypical_logits(encoder, ep), ep.query_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate_episodes(encoder: nn.Module, sampler: EpisodeSampler, *, episodes: int = 600) -> dict[str, float]:
    """Mean query accuracy over ``episodes`` episodes with its 95 % interval (normal approximation)."""
    encoder.eval()
    t0 = time.perf_counter()
    acc = torch.empty(episodes)
    for i in range(episodes):
        ep = sampler.episode(i)
        acc[i] = (prototypical_logits(encoder, ep).argmax(1) == ep.query_y).float().mean()
    std = acc.std().item() if episodes > 1 else 0.0
    return {"accuracy": acc.mean().item(), "ci95": 1.96 * std / math.sqrt(episodes), "std": std,
            "episodes": episodes, "time_s": time.perf_counter() - t0}
