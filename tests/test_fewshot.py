"""Episodic sampling, prototypical networks and the 95 % episode interval (dltricks.fewshot)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dltricks.errors import ConfigError
from dltricks.fewshot import EpisodeSampler, evaluate_episodes, prototypical_logits, train_prototypical


def _blobs(classes: int = 8, per_class: int = 30, noise: float = 0.3):
    """Images (M, 1, 2, 2) whose class is a point in 4-D plus noise."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, 4, generator=g) * 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = centres[labels] + noise * torch.randn(len(labels), 4, generator=g)
    return x.reshape(-1, 1, 2, 2), labels


def test_episode_shapes_labels_and_classes():
    x, y = _blobs()
    sampler = EpisodeSampler(x, y, classes=[4, 5, 6, 7], ways=3, shots=2, queries=5, seed=1)
    ep = sampler.episode(0)
    assert ep.support.shape == (6, 1, 2, 2) and ep.query.shape == (15, 1, 2, 2)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2] and ep.query_y.bincount().tolist() == [5, 5, 5]
    assert set(ep.classes) <= {4, 5, 6, 7} and len(set(ep.classes)) == 3
    # the support image of way n comes from class classes[n]; support and query do not overlap
    for n, c in enumerate(ep.classes):
        members = x[y == c].reshape(len(x[y == c]), -1)
        assert all((members == s.reshape(1, -1)).all(1).any() for s in ep.support[ep.support_y == n])
    assert torch.equal(sampler.episode(3).query, sampler.episode(3).query)  # reproducible by index
    with pytest.raises(ConfigError, match="ways"):
        EpisodeSampler(x, y, classes=[0, 1], ways=3)
    with pytest.raises(ConfigError, match="fewer than shots"):
        EpisodeSampler(x, y, shots=20, queries=20)


def test_prototypes_are_support_means():
    x, y = _blobs()
    ep = EpisodeSampler(x, y, ways=4, shots=3, queries=2).episode(0)
    flat = nn.Flatten()
    logits = prototypical_logits(flat, ep)
    prototypes = flat(ep.support).reshape(4, 3, 4).mean(1)
    expected = -((flat(ep.query)[:, None, :] - prototypes[None]) ** 2).sum(-1)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_separable_classes_give_high_accuracy_with_an_interval():
    x, y = _blobs()
    result = evaluate_episodes(nn.Flatten(), EpisodeSampler(x, y, classes=[4, 5, 6, 7], ways=4, shots=1,
                                                             queries=5), episodes=50)
    assert result["accuracy"] > 0.9 and result["episodes"] == 50
    assert result["ci95"] == pytest.approx(1.96 * result["std"] / math.sqrt(50))


def test_training_lowers_the_episode_loss():
    x, y = _blobs(noise=1.5)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    losses = train_prototypical(encoder, EpisodeSampler(x, y, classes=[0, 1, 2, 3], ways=4, shots=2, queries=5),
                                episodes=60, lr=1e-2)
    assert sum(losses[-10:]) < sum(losses[:10])


def test_class_splits_never_leak_novel_classes_into_training(monkeypatch):
    """EpisodeSampler.for_split draws only the classes of its side of CLASS_SPLITS (each image here is its label)."""
    import types

    import dltricks.data.imagefolder
    import dltricks.fewshot.episodes as episodes
    import dltricks.tasks.classification
    from dltricks.fewshot.episodes import CLASS_SPLITS, split_classes

    labels = torch.arange(10).repeat_interleave(20)
    images = labels.to(torch.uint8).reshape(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()  # (200, 3, 4, 4)
    fake = {"train": types.SimpleNamespace(images=images, labels=labels),
            "test": types.SimpleNamespace(images=images + 100, labels=labels)}  # test images: label + 100
    monkeypatch.setattr(dltricks.tasks.classification, "find_cifar10", lambda data_dir=None: ("imagefolder", "x"))
    monkeypatch.setattr(dltricks.data.imagefolder, "load_image_folder", lambda path: fake)
    assert set(CLASS_SPLITS["cifar10"]["train"]).isdisjoint(CLASS_SPLITS["cifar10"]["novel"])
    for split, allowed, offset in (("train", {0, 1, 2, 3, 4}, 0), ("novel", {5, 6, 7, 8, 9}, 100)):
        sampler = EpisodeSampler.for_split("cifar10", split, ways=5, shots=5, queries=10, seed=2)
        assert sampler.classes == split_classes("cifar10", split) == sorted(allowed)
        drawn = set()
        for i in range(50):
            ep = sampler.episode(i)
            for images_, y in ((ep.support, ep.support_y), (ep.query, ep.query_y)):
                original = images_[:, 0, 0, 0].long() - offset  # (N*K,) or (N*Q,): the class of every image
                assert torch.equal(original, torch.tensor(ep.classes)[y])
                drawn |= set(original.tolist())
        assert drawn == allowed  # every class of the split is used, and only those
    assert episodes.split_classes("mnist", "novel") == [5, 6, 7, 8, 9]
    with pytest.raises(ConfigError, match="dataset: no class split for 'cifar100'"):
        split_classes("cifar100", "train")
    with pytest.raises(ConfigError, match="split: expected one of train, novel"):
        split_classes("cifar10", "test")
