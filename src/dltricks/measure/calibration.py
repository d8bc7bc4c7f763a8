"""Calibration: does a model's confidence match its accuracy?

**Expected calibration error** (Naeini, Cooper & Hauskrecht, AAAI 2015; the form used by Guo, Pleiss,
Sun & Weinberger, "On calibration of modern neural networks", ICML 2017). Take each sample's
confidence ``p_i = max_k softmax(z_i)_k`` and whether its prediction is right. Split ``[0, 1]`` into
``M`` equal-width bins ``B_m = ((m-1)/M, m/M]`` (a confidence of exactly 0 goes to the first bin) and
compare, in each bin, the accuracy with the mean confidence::

    ECE = sum_m |B_m| / n * | acc(B_m) - conf(B_m) |

Empty bins contribute nothing. The maximum calibration error (MCE) is the largest gap over
non-empty bins. ECE depends on ``M`` (15 by default, as in Guo et al.) and, with few samples per
bin, is biased upwards; report it with the bin count and compare models at the same ``M``.

Also here: the negative log-likelihood (mean cross-entropy of the true class) and the Brier score
(Brier 1950; mean over samples of ``sum_k (p_k - y_k)^2`` with one-hot ``y``, between 0 and 2), and a
reliability diagram (accuracy per bin against confidence, with the gap to the diagonal shaded).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dltricks.errors import ConfigError
from dltricks.utils.figures import save_figure

__all__ = ["CalibrationBins", "CalibrationReport", "calibration_bins", "expected_calibration_error",
           "maximum_calibration_error", "negative_log_likelihood", "brier_score", "calibration_report",
           "plot_reliability_diagram", "collect_logits"]


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics: ``edges`` (M+1,), ``count``, ``accuracy`` and ``confidence`` (M,) (NaN for
    empty bins)."""

    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def n(self) -> int:
        return int(self.count.sum())


def _probabilities(scores: torch.Tensor, from_logits: bool) -> torch.Tensor:
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise ConfigError(f"expected (N, K) logits or probabilities, got shape {tuple(scores.shape)}")
    if from_logits:
        return scores.float().softmax(dim=1)
    probs = scores.float()
    if (probs < 0).any() or not torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-4):
        raise ConfigError("probabilities must be non-negative and sum to 1 per row; pass from_logits=True for logits")
    return probs


def _labels(labels: torch.Tensor, n: int, k: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).long().flatten()
    if labels.shape[0] != n:
        raise ConfigError(f"{labels.shape[0]} labels for {n} predictions")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ConfigError(f"labels must lie in [0, {k}), got range [{int(labels.min())}, {int(labels.max())}]")
    return labels


def calibration_bins(scores: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15,
                     from_logits: bool = True) -> CalibrationBins:
    """Equal-width confidence bins ``((m-1)/M, m/M]`` with their accuracy and mean confidence."""
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    probs = _probabilities(scores, from_logits)
    labels = _labels(labels, probs.shape[0], probs.shape[1])
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False) puts x into bin m when edges[m] < x <= edges[m+1]; 0 goes to bin 0. The edges are
    # compared in the probabilities' own precision, so a confidence written as 0.8 lands in (0.6, 0.8].
    index = torch.bucketize(confidence, edges[1:-1].to(confidence.dtype), right=False)
    confidence = confidence.double()
    count = torch.bincount(index, minlength=n_bins).double()
    acc_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = (acc_sum / count).numpy()
        mean_conf = (conf_sum / count).numpy()
    return CalibrationBins(edges=edges.numpy(), count=count.numpy().astype(np.int64), accuracy=accuracy,
                           confidence=mean_conf)


def expected_calibration_error(scores: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15,
                               from_logits: bool = True) -> float:
    """ECE with ``n_bins`` equal-width bins (see the module docstring)."""
    bins = calibration_bins(scores, labels, n_bins=n_bins, from_logits=from_logits)
    if bins.n == 0:
        return 0.0
    filled = bins.count > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float((bins.count[filled] / bins.n * gaps).sum())


def maximum_calibration_error(scores: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15,
                              from_logits: bool = True) -> float:
    """Largest ``|acc - conf|`` over non-empty bins."""
    bins = calibration_bins(scores, labels, n_bins=n_bins, from_logits=from_logits)
    filled = bins.count > 0
    return float(np.abs(bins.accuracy[filled] - bins.confidence[filled]).max()) if filled.any() else 0.0


def negative_log_likelihood(scores: torch.Tensor, labels: torch.Tensor, *, from_logits: bool = True) -> float:
    """Mean ``-log p(true class)``."""
    scores = torch.as_tensor(scores).float()
    labels = _labels(labels, scores.shape[0], scores.shape[1])
    if from_logits:
        return float(F.cross_entropy(scores, labels))
    probs = _probabilities(scores, False)
    return float(-probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12).log().mean())


def brier_score(scores: torch.Tensor, labels: torch.Tensor, *, from_logits: bool = True) -> float:
    """Mean over samples of ``sum_k (p_k - onehot_k)^2`` (0 = perfect, 2 = confidently wrong)."""
    probs = _probabilities(scores, from_logits)
    labels = _labels(labels, probs.shape[0], probs.shape[1])
    onehot = F.one_hot(labels, probs.shape[1]).float()
    return float((probs - onehot).square().sum(1).mean())


@dataclass(frozen=True)
class CalibrationReport:
    ece: float
    mce: float
    nll: float
    brier: float
    accuracy: float
    mean_confidence: float
    n_bins: int
    bins: CalibrationBins

    def to_dict(self) -> dict[str, Any]:
        return {"ece": self.ece, "mce": self.mce, "nll": self.nll, "brier": self.brier, "accuracy": self.accuracy,
                "mean_confidence": self.mean_confidence, "n_bins": self.n_bins,
                "bin_count": self.bins.count.tolist(),
                "bin_accuracy": [None if np.isnan(a) else float(a) for a in self.bins.accuracy],
                "bin_confidence": [None if np.isnan(c) else float(c) for c in self.bins.confidence]}


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> CalibrationReport:
    """ECE, MCE, NLL, Brier score, accuracy and mean confidence of ``logits`` ``(N, K)``."""
    probs = _probabilities(logits, True)
    labels_t = _labels(labels, probs.shape[0], probs.shape[1])
    confidence, prediction = probs.max(1)
    return CalibrationReport(
        ece=expected_calibration_error(logits, labels_t, n_bins=n_bins),
        mce=maximum_calibration_error(logits, labels_t, n_bins=n_bins),
        nll=negative_log_likelihood(logits, labels_t),
        brier=brier_score(logits, labels_t),
        accuracy=float((prediction == labels_t).float().mean()),
        mean_confidence=float(confidence.mean()),
        n_bins=n_bins,
        bins=calibration_bins(logits, labels_t, n_bins=n_bins),
    )


def plot_reliability_diagram(scores: torch.Tensor, labels: torch.Tensor, path: str | Path, *, n_bins: int = 15,
                             from_logits: bool = True, title: str = "Reliability diagram") -> Path:
    """Accuracy per confidence bin (bars) against the diagonal of perfect calibration, the gap shaded,
    and a histogram of confidences underneath; ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = calibration_bins(scores, labels, n_bins=n_bins, from_logits=from_logits)
    ece = expected_calibration_error(scores, labels, n_bins=n_bins, from_logits=from_logits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = 1.0 / n_bins
    centres = bins.edges[:-1] + width / 2
    filled = bins.count > 0
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.6, 5.4), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(centres[filled], bins.accuracy[filled], width=width, edgecolor="black", color="#4C72B0",
           label="accuracy")
    gap_bottom = np.minimum(bins.accuracy[filled], bins.confidence[filled])
    ax.bar(centres[filled], np.abs(bins.accuracy[filled] - bins.confidence[filled]), bottom=gap_bottom,
           width=width, color="#DD8452", alpha=0.6, edgecolor="#DD8452", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(f"{title}\nECE {ece:.2%} ({n_bins} equal-width bins, n = {bins.n})", fontsize=9)
    hist.bar(centres, bins.count, width=width, color="gray", edgecolor="black")
    hist.set_xlabel("confidence (max softmax probability)")
    hist.set_ylabel("samples")
    return save_figure(fig, path)


@torch.no_grad()
def collect_logits(model: torch.nn.Module, batches: Iterable[tuple[Any, torch.Tensor]], *,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``(inputs, targets)`` batches; return ``(logits, labels)`` on CPU.
    Soft targets ``(B, K)`` are turned into their arg-max labels."""
    was_training = model.training
    model.eval()
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    all_logits, all_labels = [], []
    try:
        for x, y in batches:
            inputs = x if isinstance(x, (tuple, list)) else (x,)
            out = model(*(t.to(device) for t in inputs))
            while isinstance(out, (tuple, list)):
                out = out[0]
            all_logits.append(out.float().cpu())
            all_labels.append((y.argmax(1) if y.dim() == 2 else y).cpu())
    finally:
        model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)
