"""MAML, first-order MAML and Reptile (dltricks.fewshot.maml) against finite differences and their definitions;
matching and Siamese networks (dltricks.fewshot.metric) against brute-force loops."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError
from dltricks.fewshot import EpisodeSampler, evaluate_episodes
from dltricks.fewshot.maml import MetaLearner, meta_loss, train_meta
from dltricks.fewshot.metric import (contrastive_loss, matching_logits, nearest_neighbour_logits, train_episodic)


def _blobs(classes: int = 8, per_class: int = 30, noise: float = 0.3, dim: int = 4):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=g) * 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return x.reshape(-1, 1, 2, dim // 2), labels


def _tiny_learner(method: str, steps: int = 2) -> MetaLearner:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    return MetaLearner(net, method=method, inner_steps=steps, inner_lr=0.5)


def _episode_batch():
    x, y = _blobs(classes=2, per_class=6, noise=1.0)
    ep = EpisodeSampler(x.double(), y, ways=2, shots=2, queries=3, seed=0).episode(0)
    xs = torch.cat([ep.support, ep.query])
    meta = torch.stack([torch.cat([ep.support_y, ep.query_y]),
                        torch.cat([torch.zeros_like(ep.support_y), torch.ones_like(ep.query_y)])], 1)
    return xs, meta


def _flat_grad(learner: MetaLearner) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in learner.net.parameters()])


def test_maml_meta_gradient_matches_finite_differences():
    learner = _tiny_learner("maml").train()
    x, meta = _episode_batch()
    meta_loss(learner(x, meta), meta).backward()
    analytic = _flat_grad(learner)

    params = list(learner.net.parameters())
    numeric = torch.empty_like(analytic)
    eps, i = 1e-6, 0
    with torch.no_grad():
        for p in params:
            for j in range(p.numel()):
                old = p.view(-1)[j].item()
                p.view(-1)[j] = old + eps
                up = meta_loss(learner(x, meta), meta).item()
                p.view(-1)[j] = old - eps
                down = meta_loss(learner(x, meta), meta).item()
                p.view(-1)[j] = old
                numeric[i] = (up - down) / (2 * eps)
                i += 1
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)

    # first-order MAML drops the Hessian terms: a different gradient, equal to grad L_query at phi_S
    fo = _tiny_learner("fomaml").train()
    meta_loss(fo(x, meta), meta).backward()
    first_order = _flat_grad(fo)
    assert (first_order - analytic).abs().max() > 1e-4
    phi = fo.adapt(x[meta[:, 1] == 0], meta[meta[:, 1] == 0, 0], steps=2, second_order=False)
    phi = {k: v.detach().requires_grad_() for k, v in phi.items()}
    logits = torch.func.functional_call(fo.net, phi, (x[meta[:, 1] == 1],))
    at_phi = torch.autograd.grad(F.cross_entropy(logits, meta[meta[:, 1] == 1, 0]), list(phi.values()))
    torch.testing.assert_close(first_order, torch.cat([g.flatten() for g in at_phi]))


def test_adapt_is_plain_sgd_on_the_support_set():
    learner = _tiny_learner("maml", steps=3)
    x, meta = _episode_batch()
    s = meta[:, 1] == 0
    phi = learner.adapt(x[s], meta[s, 0], steps=3, second_order=False)
    reference = [p.detach().clone().requires_grad_() for p in learner.net.parameters()]
    copy = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    for _ in range(3):
        torch.nn.utils.vector_to_parameters(torch.cat([r.flatten() for r in reference]), copy.parameters())
        loss = F.cross_entropy(copy(x[s]), meta[s, 0])
        grads = torch.autograd.grad(loss, list(copy.parameters()))
        reference = [(r - 0.5 * g).detach() for r, g in zip(reference, grads)]
    for got, want in zip(phi.values(), reference):
        torch.testing.assert_close(got.detach(), want)


def test_reptile_gradient_is_theta_minus_phi():
    learner = _tiny_learner("reptile").train()
    x, meta = _episode_batch()
    meta_loss(learner(x, meta), meta).backward()
    s = meta[:, 1] == 0
    phi = learner.adapt(x[s], meta[s, 0], steps=2, second_order=False)
    expected = torch.cat([(p - phi[k]).detach().flatten() for k, p in learner.net.named_parameters()])
    torch.testing.assert_close(_flat_grad(learner), expected)


def test_meta_learner_rejects_bad_options_and_learns_through_fit():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="method"):
        MetaLearner(net, method="mamll")
    with pytest.raises(ConfigError, match="inner_lr"):
        MetaLearner(net, inner_lr=0.0)
    x, y = _blobs(noise=1.0)
    sampler = EpisodeSampler(x, y, classes=[0, 1, 2, 3], ways=2, shots=1, queries=5)
    torch.manual_seed(0)
    learner = MetaLearner(nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                        nn.Linear(16, 2)), method="maml", inner_steps=1, inner_lr=0.5)
    assert not any(isinstance(b, torch.Tensor) for b in learner.net.buffers())  # batch statistics only
    losses = train_meta(learner, sampler, episodes=60, lr=1e-2)
    assert len(losses) == 60 and sum(losses[-10:]) < sum(losses[:10])
    test = EpisodeSampler(x, y, classes=[4, 5, 6, 7], ways=2, shots=1, queries=5)
    result = evaluate_episodes(learner, test, episodes=40, classify=lambda m, ep: m.episode_logits(ep))
    assert result["accuracy"] > 0.8


def test_matching_attention_and_nearest_neighbour_against_loops():
    x, y = _blobs()
    ep = EpisodeSampler(x, y, ways=3, shots=2, queries=2).episode(1)
    flat = nn.Flatten()
    log_p = matching_logits(flat, ep)
    s, q = flat(ep.support), flat(ep.query)
    for i in range(len(q)):
        cos = torch.stack([F.cosine_similarity(q[i], s[j], dim=0) for j in range(len(s))])
        a = torch.softmax(10 * cos, 0)
        p = torch.stack([a[ep.support_y == n].sum() for n in range(3)])
        torch.testing.assert_close(log_p[i], p.log())
    nn_scores = nearest_neighbour_logits(flat, ep)
    zs, zq = F.normalize(s, dim=1), F.normalize(q, dim=1)
    for i in range(len(q)):
        for n in range(3):
            d2 = min(((zq[i] - zs[j]) ** 2).sum() for j in range(len(s)) if ep.support_y[j] == n)
            torch.testing.assert_close(nn_scores[i, n], -d2)


def test_contrastive_loss_against_pair_loop_and_training():
    g = torch.Generator().manual_seed(0)
    z, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 0, 1, 1, 2, 2])
    zn = F.normalize(z, dim=1)
    pos, neg = [], []
    for i in range(6):
        for j in range(i + 1, 6):
            d = (zn[i] - zn[j]).norm()
            (pos if labels[i] == labels[j] else neg).append(0.5 * d ** 2 if labels[i] == labels[j]
                                                            else 0.5 * max(0.0, 1.0 - d) ** 2)
    expected = torch.stack(pos).mean() + torch.tensor(neg).mean()
    torch.testing.assert_close(contrastive_loss(z, labels), expected)
    x, y = _blobs(noise=1.5)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    sampler = EpisodeSampler(x, y, classes=[0, 1, 2, 3], ways=4, shots=2, queries=5)
    for method in ("siamese", "matching"):
        losses = train_episodic(encoder, sampler, method=method, episodes=40, lr=1e-2)
        assert sum(losses[-10:]) < sum(losses[:10]), method


def test_maml_recipe_section_is_typed_and_checked():
    from dltricks.train.recipe import load_recipe

    recipe = load_recipe("maml-fewshot")
    assert (recipe.maml.method, recipe.maml.inner_steps, recipe.maml.inner_lr, recipe.maml.eval_steps,
            recipe.maml.tasks_per_batch) == ("maml", 1, 0.4, 3, 1)
    assert load_recipe(None, ["maml.method=reptile", "maml.tasks_per_batch=4"]).maml.tasks_per_batch == 4
    for bad, key in (({"inner_stepz": 2}, "maml.inner_stepz"), ({"inner_steps": "two"}, "maml.inner_steps"),
                     ({"method": "mamll"}, "maml.method"), ({"inner_lr": 0.0}, "maml.inner_lr"),
                     ({"tasks_per_batch": 0}, "maml.tasks_per_batch"), ({"eval_steps": 1.5}, "maml.eval_steps")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_recipe({"maml": bad})
    learner = MetaLearner.from_config(nn.Linear(4, 2), load_recipe({"maml": {"method": "fomaml", "inner_steps": 2,
                                                                              "inner_lr": 0.3}}).maml)
    assert (learner.method, learner.inner_steps, learner.inner_lr, learner.eval_steps) == ("fomaml", 2, 0.3, 2)


def test_fit_meta_step_is_the_mean_meta_gradient_of_its_tasks():
    """One outer SGD step with maml.tasks_per_batch = 2 is theta - lr * mean of the two episodes' MAML gradients."""
    from dltricks.fewshot.maml import fit_meta
    from dltricks.train.recipe import load_recipe

    x, y = _blobs(noise=1.0)
    sampler = EpisodeSampler(x, y, classes=[0, 1, 2, 3], ways=2, shots=2, queries=3, seed=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    reference = MetaLearner(copy.deepcopy(net), method="maml",
                            inner_steps=2, inner_lr=0.3).train()
    grads = []
    for i in (0, 1):  # the two episodes of the first outer step
        ep = sampler.episode(i)
        xs = torch.cat([ep.support, ep.query]).float()
        meta = torch.stack([torch.cat([ep.support_y, ep.query_y]),
                            torch.cat([torch.zeros_like(ep.support_y), torch.ones_like(ep.query_y)])], 1)
        reference.zero_grad()
        meta_loss(reference(xs, meta), meta).backward()
        grads.append(_flat_grad(reference).clone())
    theta = torch.cat([p.detach().flatten() for p in reference.net.parameters()])
    recipe = load_recipe({"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0}, "schedule": {"name": "constant"},
                          "train": {"steps": 1, "device": "cpu", "channels_last": False},
                          "maml": {"method": "maml", "inner_steps": 2, "inner_lr": 0.3, "tasks_per_batch": 2}})
    learner, losses = fit_meta(net, sampler, recipe)
    assert len(losses) == 1 and learner.inner_steps == 2
    after = torch.cat([p.detach().flatten() for p in learner.net.parameters()])
    torch.testing.assert_close(after, theta - 0.1 * (grads[0] + grads[1]) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="train.accum_steps"):
        fit_meta(net, sampler, load_recipe(recipe, ["train.accum_steps=2"]))
    with pytest.raises(ConfigError, match="train.steps"):
        fit_meta(net, sampler, load_recipe(recipe, ["train.steps=0"]))
