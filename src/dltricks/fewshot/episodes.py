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

**Class splits.** ``CLASS_SPLITS`` fixes which classes train and which are novel: MNIST digits 0-4 / 5-9 and
CIFAR-10 classes 0-4 (airplane, automobile, bird, cat, deer) / 5-9 (dog, frog, horse, ship, truck).
:meth:`EpisodeSampler.for_split` draws episodes from one side only (CIFAR-10: training episodes from the
training images, novel episodes from the test images), so no novel class reaches training.

Measured (docs/fewshot.md, ``benchmarks/fewshot_cifar10.py``): ``small_cnn`` (16, 32, 64) trained as a prototypical
network on 600 five-way one-shot episodes of CIFAR-10 classes 0-4 scores 40.4 % +- 0.7 (1-shot) and 50.4 % +- 0.5
(5-shot) on 600 episodes of the novel classes 5-9 (chance 20 %; one training seed, 95 % episode intervals).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError, did_you_mean
from dltricks.models import create_model
from dltricks.tasks.base import Task
from dltricks.train import fit
from dltricks.train.recipe import load_recipe

__all__ = ["CLASS_SPLITS", "split_classes", "Episode", "EpisodeSampler", "create_encoder", "EpisodeLoader",
           "episode_task", "prototypical_logits", "prototypical_loss", "prototypical_metrics", "train_prototypical",
           "evaluate_episodes"]


# Training and novel classes of each data set: the novel ones are only ever drawn for evaluation.
CLASS_SPLITS: dict[str, dict[str, tuple[int, ...]]] = {
    "mnist": {"train": (0, 1, 2, 3, 4), "novel": (5, 6, 7, 8, 9)},
    "cifar10": {"train": (0, 1, 2, 3, 4), "novel": (5, 6, 7, 8, 9)},  # airplane ... deer | dog ... truck
}


def split_classes(dataset: str, split: str) -> list[int]:
    """The classes of ``split`` ("train" or "novel") of ``dataset`` in :data:`CLASS_SPLITS`."""
    if dataset not in CLASS_SPLITS:
        raise ConfigError(f"dataset: no class split for {dataset!r}; expected one of {', '.join(CLASS_SPLITS)}."
                          f"{did_you_mean(dataset, list(CLASS_SPLITS))}")
    if split not in CLASS_SPLITS[dataset]:
        raise ConfigError(f"split: expected one of {', '.join(CLASS_SPLITS[dataset])}, got {split!r}")
    return list(CLASS_SPLITS[dataset][split])


def _split_images(dataset: str, split: str, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels an episode of ``split`` may draw from (before restricting to its classes)."""
    if dataset == "mnist":
        from dltricks.data.mnist import load_mnist_embedded

        data = load_mnist_embedded("all")  # the 10,000 embedded images; train and novel differ by class
        return data.images, data.labels
    from dltricks.data.imagefolder import load_image_folder
    from dltricks.tasks.classification import find_cifar10

    kind, path = find_cifar10(data_dir)
    if kind == "python":
        from dltricks.data.cifar import load_cifar10_splits

        splits = load_cifar10_splits(path)
    else:
        splits = load_image_folder(path)
    data = splits["train" if split == "train" else "test"]  # novel classes: images of the test split
    return data.images, data.labels


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

    @classmethod
    def for_split(cls, dataset: str, split: str, *, data_dir: str | None = None, ways: int = 5, shots: int = 1,
                  queries: int = 15, seed: int = 0) -> EpisodeSampler:
        """Episodes of the ``split`` ("train" or "novel") classes of ``dataset`` ("mnist": the embedded images;
        "cifar10": its training images for "train", its test images for "novel"; ``data_dir`` or
        ``DLTRICKS_DATA`` locate CIFAR-10)."""
        classes = split_classes(dataset, split)
        images, labels = _split_images(dataset, split, data_dir)
        return cls(images, labels, classes=classes, ways=ways, shots=shots, queries=queries, seed=seed)

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


def create_encoder(name: str, **kwargs: object) -> nn.Module:
    """Model ``name`` from the registry with its classifier removed: it returns the pooled features."""
    model = create_model(name, num_classes=1, **kwargs)
    model.reset_classifier(0)
    return model


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def prototypical_logits(encoder: nn.Module, episode: Episode) -> torch.Tensor:
    """``(N*Q, N)`` logits: minus the squared distance of each query embedding to each class prototype."""
    ways = int(episode.support_y.max()) + 1
    z_support = encoder(_as_float(episode.support))  # (N*K, D)
    z_query = encoder(_as_float(episode.query))  # (N*Q, D)
    prototypes = z_support.reshape(ways, -1, z_support.shape[-1]).mean(1)  # (N, D): class-major support order
    return -torch.cdist(z_query, prototypes).pow(2)  # (N*Q, N)


class EpisodeLoader:
    """Episodes of ``sampler`` as a stream of training batches for :func:`dltricks.train.fit`.

    Batch b of period e is episode ``e * episodes_per_period + b``: ``x`` is the support images followed by
    the query images ``(N*K + N*Q, C, H, W)``, ``y`` is ``(N*K + N*Q, 2)``: the label within the episode and
    1 for a query (0 for support), which :func:`prototypical_loss` needs to form the prototypes.
    """

    stream = True

    def __init__(self, sampler: EpisodeSampler, *, episodes_per_period: int = 1) -> None:
        self.sampler, self._n = sampler, episodes_per_period
        self.batch_size = sampler.ways * (sampler.shots + sampler.queries)
        self.num_samples = self._n * self.batch_size

    def __len__(self) -> int:
        return self._n

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(start_batch, self._n):
            ep = self.sampler.episode(epoch * self._n + b)
            x = torch.cat([_as_float(ep.support), _as_float(ep.query)])
            labels = torch.cat([ep.support_y, ep.query_y])
            is_query = torch.cat([torch.zeros_like(ep.support_y), torch.ones_like(ep.query_y)])
            yield x, torch.stack([labels, is_query], dim=1)  # (N*K + N*Q, 2)


def _episode_logits(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Query logits ``(N*Q, N)`` and labels from embeddings ``z`` of an :class:`EpisodeLoader` batch."""
    support = y[:, 1] == 0
    ways = int(y[support, 0].max()) + 1
    z_support = z[support]
    prototypes = z_support.reshape(ways, -1, z_support.shape[-1]).mean(1)  # (N, D): class-major support order
    return -torch.cdist(z[~support], prototypes).pow(2), y[~support, 0]


def prototypical_loss(output: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0,
                      **_: object) -> torch.Tensor:
    """Cross-entropy of the queries against the prototypes of the support images (the episode's loss)."""
    logits, labels = _episode_logits(output.float(), target)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def prototypical_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Sums over the queries of an episode: ``loss``, ``correct`` and ``count``."""
    logits, labels = _episode_logits(output.float(), target)
    return {"loss": F.cross_entropy(logits, labels, reduction="sum").item(),
            "correct": float((logits.argmax(1) == labels).sum()), "count": float(labels.numel())}


def episode_task(sampler: EpisodeSampler, *, episodes_per_period: int = 1) -> Task:
    """A training task of episodes: the encoder's outputs are embeddings, scored by the prototypical loss."""
    return Task(name="episodes", train_loader=EpisodeLoader(sampler, episodes_per_period=episodes_per_period),
                val_loader=None, num_classes=sampler.ways, loss=prototypical_loss,
                batch_metrics=prototypical_metrics, input_shape=tuple(sampler.images.shape[1:]),
                extra={"output": "embedding"})


def train_prototypical(encoder: nn.Module, sampler: EpisodeSampler, *, episodes: int = 200, lr: float = 1e-3,
                       ) -> list[float]:
    """Train ``encoder`` on ``episodes`` episodes with Adam through :func:`dltricks.train.fit`; returns the
    loss of each episode."""
    recipe = load_recipe({"optim": {"name": "adam", "lr": lr}, "schedule": {"name": "constant"},
                          "train": {"steps": episodes, "device": "cpu", "channels_last": False}})
    result = fit(encoder, episode_task(sampler), recipe, progress=False)
    return [record["train_loss"] for record in result.history]


@torch.no_grad()
def evaluate_episodes(encoder: nn.Module, sampler: EpisodeSampler, *, episodes: int = 600,
                      classify: Callable[[nn.Module, Episode], torch.Tensor] = prototypical_logits,
                      ) -> dict[str, float]:
    """Mean query accuracy over ``episodes`` episodes with its 95 % interval (normal approximation).

    ``classify(encoder, episode)`` gives the ``(N*Q, N)`` query scores: prototypes by default,
    :func:`matching_logits`, :func:`nearest_neighbour_logits` (Siamese), ``MetaLearner.episode_logits``..."""
    encoder.eval()
    t0 = time.perf_counter()
    acc = torch.empty(episodes)
    for i in range(episodes):
        ep = sampler.episode(i)
        acc[i] = (classify(encoder, ep).argmax(1) == ep.query_y).float().mean()
    std = acc.std().item() if episodes > 1 else 0.0
    return {"accuracy": acc.mean().item(), "ci95": 1.96 * std / math.sqrt(episodes), "std": std,
            "episodes": episodes, "time_s": time.perf_counter() - t0}
