"""Calibration metrics against hand computations (equal-width bins ((m-1)/M, m/M])."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dltricks.errors import ConfigError
from dltricks.measure.calibration import (brier_score, calibration_bins, calibration_report, collect_logits,
                                          expected_calibration_error, maximum_calibration_error,
                                          negative_log_likelihood, plot_reliability_diagram)

# Six samples, two classes, probabilities given directly.
PROBS = torch.tensor([[0.95, 0.05], [0.90, 0.10], [0.35, 0.65], [0.30, 0.70], [0.45, 0.55], [0.20, 0.80]])
LABELS = torch.tensor([0, 1, 1, 0, 1, 1])


def test_ece_by_hand() -> None:
    # confidences: .95 .90 .65 .70 .55 .80; correct: 1 0 1 0 1 1.
    # 5 bins of width 0.2: (0.4,0.6]: {.55: right}; (0.6,0.8]: {.65 right, .70 wrong, .80 right};
    # (0.8,1]: {.95 right, .90 wrong}
    # gaps: |1-.55| = .45 (1 sample); |2/3 - .7167| = .05 (3); |.5 - .925| = .425 (2)
    expected = (1 * 0.45 + 3 * abs(2 / 3 - (0.65 + 0.70 + 0.80) / 3) + 2 * abs(0.5 - 0.925)) / 6
    assert expected_calibration_error(PROBS, LABELS, n_bins=5, from_logits=False) == pytest.approx(expected)
    assert maximum_calibration_error(PROBS, LABELS, n_bins=5, from_logits=False) == pytest.approx(0.45)
    bins = calibration_bins(PROBS, LABELS, n_bins=5, from_logits=False)
    assert bins.count.tolist() == [0, 0, 1, 3, 2]
    assert math.isnan(bins.accuracy[0]) and bins.accuracy[3] == pytest.approx(2 / 3)


def test_bin_edges_are_right_closed() -> None:
    # Confidence exactly 0.6 belongs to (0.4, 0.6], not (0.6, 0.8].
    probs = torch.tensor([[0.6, 0.4], [0.4, 0.6]])
    bins = calibration_bins(probs, torch.tensor([0, 0]), n_bins=5, from_logits=False)
    assert bins.count.tolist() == [0, 0, 2, 0, 0]


def test_ece_matches_a_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g) * 3
    labels = torch.randint(0, 7, (500,), generator=g)
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    total = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        in_bin = [(c > lo or (m == 0 and c == 0)) and c <= hi for c in conf.tolist()]
        idx = torch.tensor(in_bin)
        if idx.any():
            total += idx.sum().item() / 500 * abs((pred[idx] == labels[idx]).float().mean().item()
                                                  - conf[idx].mean().item())
    assert expected_calibration_error(logits, labels) == pytest.approx(total, abs=1e-6)


def test_perfectly_calibrated_synthetic_data_has_small_ece() -> None:
    g = torch.Generator().manual_seed(1)
    n = 20000
    conf = torch.rand(n, generator=g) * 0.5 + 0.5  # binary: confidence in [0.5, 1]
    correct = torch.rand(n, generator=g) < conf
    labels = torch.where(correct, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long))
    probs = torch.stack([conf, 1 - conf], 1)
    assert expected_calibration_error(probs, labels, from_logits=False) < 0.02
    # Sharpening the same predictions makes them over-confident: ECE grows.
    sharp = torch.stack([conf.pow(0.2), 1 - conf.pow(0.2)], 1)
    assert expected_calibration_error(sharp, labels, from_logits=False) > 0.1


def test_nll_and_brier() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    assert negative_log_likelihood(logits, labels) == pytest.approx(float(F.cross_entropy(logits, labels)))
    p = logits.softmax(1)
    brier = ((p[0] - torch.tensor([1.0, 0, 0])).square().sum() + (p[1] - torch.tensor([0, 0, 1.0])).square().sum()) / 2
    assert brier_score(logits, labels) == pytest.approx(float(brier))
    assert negative_log_likelihood(p, labels, from_logits=False) == pytest.approx(
        float(F.cross_entropy(logits, labels)), rel=1e-5)


def test_report_and_reliability_diagram(tmp_path) -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(300, 4, generator=g) * 2
    labels = torch.randint(0, 4, (300,), generator=g)
    report = calibration_report(logits, labels)
    assert report.ece == pytest.approx(expected_calibration_error(logits, labels))
    assert 0 <= report.accuracy <= 1 and report.n_bins == 15
    assert sum(report.to_dict()["bin_count"]) == 300
    path = plot_reliability_diagram(logits, labels, tmp_path / "reliability.png")
    assert path.stat().st_size > 1000


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError, match="labels must lie"):
        expected_calibration_error(PROBS, torch.tensor([0, 1, 2, 0, 1, 1]), from_logits=False)
    with pytest.raises(ConfigError, match="sum to 1"):
        expected_calibration_error(torch.tensor([[2.0, 1.0]]), torch.tensor([0]), from_logits=False)
    with pytest.raises(ConfigError, match="labels for"):
        expected_calibration_error(PROBS, LABELS[:3], from_logits=False)
    with pytest.raises(ConfigError, match="n_bins"):
        expected_calibration_error(PROBS, LABELS, n_bins=0, from_logits=False)


def test_collect_logits() -> None:
    model = torch.nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])),
               (torch.randn(2, 3), torch.tensor([[0.2, 0.8], [1.0, 0.0]]))]
    logits, labels = collect_logits(model, batches)
    assert logits.shape == (6, 2) and labels.tolist() == [0, 1, 0, 1, 1, 0]
    assert np.isfinite(logits.numpy()).all()
