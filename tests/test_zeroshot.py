"""Zero-shot attribute models (dltricks.fewshot.zeroshot) and the fine-tuned few-shot baseline
(dltricks.fewshot.baseline) against brute-force loops and separable toy data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dltricks.data.base import ArrayDataset
from dltricks.errors import ConfigError
from dltricks.fewshot import EpisodeSampler, evaluate_episodes
from dltricks.fewshot.baseline import FinetunedHead, class_subset
from dltricks.fewshot.zeroshot import (DIGIT_ATTRIBUTES, UNSEEN_DIGITS, class_scores, evaluate_zero_shot,
                                       train_attribute_model)


def test_attribute_table_separates_classes_and_unseen_attributes_are_learnable():
    import re

    import dltricks.fewshot.zeroshot as zeroshot

    documented = [line for line in zeroshot.__doc__.splitlines() if re.match(r"\| \d \|", line)]
    table = [[float(v) for v in line.strip("| ").split(" | ")[1:]] for line in documented]
    assert torch.equal(torch.tensor(table), DIGIT_ATTRIBUTES)  # the docstring's table is the one the code uses
    rows = {tuple(r.tolist()) for r in DIGIT_ATTRIBUTES}
    assert len(rows) == 10  # every digit has its own attribute signature
    seen = [c for c in range(10) if c not in UNSEEN_DIGITS]
    present_in_seen = DIGIT_ATTRIBUTES[seen].amax(0)
    for c in UNSEEN_DIGITS:
        assert bool((present_in_seen >= DIGIT_ATTRIBUTES[c]).all()), c


def test_dap_and_compatibility_scores_against_loops():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(4, 11, generator=g)
    prior = DIGIT_ATTRIBUTES[:7].mean(0)
    dap = class_scores(out, DIGIT_ATTRIBUTES, method="dap", prior=prior)
    compat = class_scores(out, DIGIT_ATTRIBUTES, method="compatibility")
    p = torch.sigmoid(out)
    for i in range(4):
        for c in range(10):
            a = DIGIT_ATTRIBUTES[c]
            log_post = sum(math.log(p[i, m] if a[m] else 1 - p[i, m]) for m in range(11))
            log_prior = sum(math.log(prior[m].clamp(1e-3, 1 - 1e-3) if a[m] else 1 - prior[m].clamp(1e-3, 1 - 1e-3))
                            for m in range(11))
            torch.testing.assert_close(dap[i, c].item(), log_post - log_prior, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(compat[i, c].item(), float(out[i] @ a) / float(a.norm()), rtol=1e-5,
                                       atol=1e-5)


def _attribute_images(per_class: int = 40, noise: float = 0.15, seed: int = 0):
    """Images (M, 1, 1, 11) that show their class's attribute row plus noise, as uint8."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(per_class)
    x = DIGIT_ATTRIBUTES[labels] + noise * torch.randn(len(labels), 11, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).reshape(-1, 1, 1, 11)
    return images, labels


@pytest.mark.parametrize("method", ["dap", "compatibility"])
def test_attribute_models_recognise_unseen_classes_of_toy_data(method):
    images, labels = _attribute_images()
    seen = [c for c in range(10) if c not in UNSEEN_DIGITS]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(11, 32), nn.ReLU(), nn.Linear(32, 11))
    train_attribute_model(net, class_subset(images, labels, seen, name="toy"), DIGIT_ATTRIBUTES[seen],
                          method=method, epochs=15, lr=1e-2, batch_size=32)
    test_images, test_labels = _attribute_images(per_class=20, seed=1)
    r = evaluate_zero_shot(net, test_images, test_labels, seen=seen, unseen=list(UNSEEN_DIGITS), method=method)
    assert r["zsl_accuracy"] > 0.8 and r["chance"] == pytest.approx(1 / 3)
    assert r["gzsl_h"] == pytest.approx(2 * r["gzsl_seen"] * r["gzsl_unseen"] / (r["gzsl_seen"] + r["gzsl_unseen"]))


def test_zero_shot_metrics_are_per_class_means_and_bad_options_fail():
    images, labels = _attribute_images(per_class=5, noise=0.0)
    exact = nn.Sequential(nn.Flatten(), nn.Linear(11, 11))
    with torch.no_grad():  # logits +-10 from the attributes themselves: DAP is then always right
        exact[1].weight.copy_(20 * torch.eye(11))
        exact[1].bias.fill_(-10)
    r = evaluate_zero_shot(exact, images, labels, seen=[0, 1, 2, 4, 5, 6, 9], unseen=[3, 7, 8], method="dap")
    assert r["zsl_accuracy"] == 1.0 and r["gzsl_seen"] == 1.0 and r["gzsl_unseen"] == 1.0
    with pytest.raises(ConfigError, match="method"):
        evaluate_zero_shot(exact, images, labels, seen=[0], unseen=[3], method="ale")


def test_class_subset_renumbers_and_the_finetuned_head_classifies_separable_episodes():
    x = torch.arange(12, dtype=torch.uint8).reshape(12, 1, 1, 1)
    y = torch.tensor([0, 1, 2, 3] * 3)
    sub = class_subset(x, y, [3, 1], name="s")
    assert sub.labels.tolist() == [1, 0] * 3 and sub.images.flatten().tolist() == [1, 3, 5, 7, 9, 11]
    assert isinstance(sub, ArrayDataset) and sub.mean == (0.0,) and sub.std == (1.0,)

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 4, generator=g) * 3
    labels = torch.arange(6).repeat_interleave(20)
    points = (centres[labels] + 0.3 * torch.randn(len(labels), 4, generator=g)).reshape(-1, 1, 2, 2)
    encoder = nn.Flatten()
    result = evaluate_episodes(encoder, EpisodeSampler(points, labels, ways=4, shots=2, queries=5), episodes=10,
                               classify=FinetunedHead(steps=100, lr=0.05))
    assert result["accuracy"] > 0.9
