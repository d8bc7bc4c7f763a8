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
