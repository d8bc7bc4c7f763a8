"""Uncertainty of a classifier: predictive distributions, their calibration and what they are good for.

Ways to get a predictive distribution ``p(y | x)`` from trained networks:

* **softmax** of one network (the baseline).
* **Temperature scaling** (Guo, Pleiss, Sun & Weinberger, ICML 2017): ``p = softmax(z / T)`` with one
  scalar ``T > 0`` fitted by minimising the NLL on held-out validation logits (LBFGS on ``log T``).
  Dividing by ``T`` keeps the order of the logits, so the arg-max and the accuracy are unchanged; only
  the confidence moves.
* **MC dropout** (Gal & Ghahramani, ICML 2016): keep dropout on at test time and average ``S`` passes,
  ``p = 1/S sum_s softmax(f(x; mask_s))``; batch norm stays in eval mode. A model without dropout layers
  cannot do it (an error); with ``p = 0`` it equals the deterministic model.
* **SNGP** (Liu et al., NeurIPS 2020): a network trained with spectral normalisation and a random-feature
  GP output layer (:mod:`dltricks.models.sngp`) predicts with mean-field logits
  ``logits / sqrt(1 + pi/8 * var)`` from the Laplace posterior of its output layer (:func:`sngp_probs`).
* **GP head** (sparse variational GP classification with GPyTorch, :mod:`dltricks.layers.gp_head`): fitted
  on the frozen pre-logit features of a trained network by :func:`dltricks.train.gp_head.fit_gp_head`.
* **Deep ensembles** (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017): independently trained
  members (other seeds), ``p = 1/M sum_m softmax(f_m(x))``. An ensemble of identical members is the
  member itself.

What we measure with it (besides NLL, ECE and Brier of :mod:`dltricks.measure.calibration`):

* **Selective prediction**: answer only the fraction ``c`` (coverage) of inputs with the highest
  confidence ``max_k p_k``; the accuracy-coverage curve and the area under the risk-coverage curve
  (AURC, Geifman & El-Yaniv 2017: mean error over the ``n`` coverages ``k/n``; lower is better).
* **Out-of-distribution detection**: score each input by its confidence (or negative entropy) and
  report the AUROC of telling in-distribution inputs (positives) from OOD inputs: the probability that a
  random in-distribution input scores higher than a random OOD one, ties counted half (the
  Mann-Whitney statistic; 0.5 is chance).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError
from dltricks.measure.calibration import calibration_report
from dltricks.utils.figures import save_figure

__all__ = ["has_dropout", "predict_probs", "mc_dropout_probs", "sngp_layers", "sngp_probs", "ensemble_probs",
           "check_ensemble", "fit_temperature",
           "accuracy_coverage", "aurc", "auroc", "confidence_score", "ood_auroc", "uncertainty_metrics",
           "plot_accuracy_coverage"]

Batches = Iterable[tuple[Any, torch.Tensor]]


def _output_logits(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _inputs(x: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device) for t in (x if isinstance(x, (tuple, list)) else (x,)))


def _labels(y: torch.Tensor) -> torch.Tensor:
    return (y.argmax(1) if y.dim() == 2 else y).cpu()


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` holds any dropout layer (``nn.Dropout``, ``Dropout2d``, ``AlphaDropout``...)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


@torch.no_grad()
def predict_probs(model: nn.Module, batches: Batches, *, temperature: float = 1.0) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
    """``(probs (N, K), labels (N,))`` of ``softmax(logits / temperature)`` in eval mode."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    was_training, device = model.training, _device_of(model)
    model.eval()
    probs, labels = [], []
    try:
        for x, y in batches:
            probs.append((_output_logits(model(*_inputs(x, device))) / temperature).softmax(1).cpu())
            labels.append(_labels(y))
    finally:
        model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


@torch.no_grad()
def mc_dropout_probs(model: nn.Module, batches: Batches, *, samples: int = 20,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MC dropout: the mean softmax of ``samples`` passes with dropout on and everything else (batch norm)
    in eval mode. Raises :class:`ConfigError` for a model without dropout layers."""
    if not has_dropout(model):
        raise ConfigError(f"MC dropout needs dropout layers, and {type(model).__name__} has none; train it with "
                          "dropout (e.g. --model-opt drop_rate=0.2) or use another uncertainty method")
    if samples < 1:
        raise ConfigError(f"MC dropout samples must be >= 1, got {samples}")
    was_training, device = model.training, _device_of(model)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
    probs, labels = [], []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for x, y in batches:
                inputs = _inputs(x, device)
                mean = sum(_output_logits(model(*inputs)).softmax(1) for _ in range(samples)) / samples  # (B, K)
                probs.append(mean.cpu())
                labels.append(_labels(y))
    finally:
        model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def sngp_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` with an SNGP output layer (a ``laplace`` precision and a ``mean_field`` switch)."""
    from dltricks.layers.random_features import LaplacePrecision

    return [m for m in model.modules() if isinstance(getattr(m, "laplace", None), LaplacePrecision)
            and hasattr(m, "mean_field")]


@torch.no_grad()
def sngp_probs(model: nn.Module, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """SNGP's predictive distribution: softmax of the mean-field logits (eval mode). Raises
    :class:`ConfigError` for a model without an SNGP output layer."""
    layers = sngp_layers(model)
    if not layers:
        raise ConfigError(f"SNGP needs a random-feature GP output layer, and {type(model).__name__} has none; train "
                          "an SNGP model (e.g. sngp_mlp) or use another uncertainty method")
    before = [m.mean_field for m in layers]
    for m in layers:
        m.mean_field = True
    try:
        return predict_probs(model, batches)
    finally:
        for m, flag in zip(layers, before):
            m.mean_field = flag


def check_ensemble(models: Sequence[nn.Module]) -> None:
    """Members must share one architecture: the same class and the same parameter names and shapes."""
    if not models:
        raise ConfigError("an ensemble needs at least one member")

    def signature(m: nn.Module) -> tuple[str, tuple[tuple[str, tuple[int, ...]], ...]]:
        return type(m).__name__, tuple((k, tuple(v.shape)) for k, v in m.state_dict().items())

    first = signature(models[0])
    for i, m in enumerate(models[1:], start=2):
        sig = signature(m)
        if sig[0] != first[0]:
            raise ConfigError(f"ensemble member {i} is a {sig[0]} but member 1 is a {first[0]}; members must share "
                              "one architecture")
        if sig[1] != first[1]:
            diff = next((a, b) for a, b in zip(first[1] + (("-", ()),), sig[1] + (("-", ()),)) if a != b)
            raise ConfigError(f"ensemble member {i} differs from member 1 in its parameters ({diff[1][0]} "
                              f"{diff[1][1]} vs {diff[0][0]} {diff[0][1]}): another width or class count")


@torch.no_grad()
def ensemble_probs(models: Sequence[nn.Module], batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep ensemble: the mean of the members' softmax outputs (each member in eval mode)."""
    check_ensemble(models)
    batches = list(batches)
    total: torch.Tensor | None = None
    labels = torch.empty(0, dtype=torch.int64)
    for m in models:
        probs, labels = predict_probs(m, batches)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(models), labels


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 100) -> float:
    """The temperature ``T`` minimising ``NLL(softmax(logits / T), labels)`` (LBFGS on ``log T``, from
    ``T = 1``). Falls back to ``T = 1`` if the optimiser ends worse than where it started."""
    logits = torch.as_tensor(logits).detach().float()
    labels = torch.as_tensor(labels).long()
    if logits.dim() != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ConfigError(f"expected (N, K) logits and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    with torch.no_grad():
        before = F.cross_entropy(logits, labels)
        after = F.cross_entropy(logits / t, labels)
    return t if bool(torch.isfinite(after)) and after <= before else 1.0


def confidence_score(probs: torch.Tensor, *, score: str = "max_prob") -> torch.Tensor:
    """Per-input confidence: ``max_prob`` (max softmax probability) or ``neg_entropy`` (``sum p log p``)."""
    if score == "max_prob":
        return probs.max(1).values
    if score == "neg_entropy":
        return (probs * probs.clamp_min(1e-12).log()).sum(1)
    raise ConfigError(f"unknown confidence score {score!r}; expected max_prob or neg_entropy")


def accuracy_coverage(probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(coverage, accuracy)`` of answering the ``k`` most confident inputs, ``k = 1..n``."""
    confidence, prediction = probs.max(1)
    order = torch.argsort(confidence, descending=True, stable=True)
    correct = (prediction[order] == labels[order]).double()
    k = torch.arange(1, len(correct) + 1, dtype=torch.float64)
    return (k / len(correct)).numpy(), (correct.cumsum(0) / k).numpy()


def aurc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the risk-coverage curve: the mean over coverages ``k/n`` of the selective error."""
    _, accuracy = accuracy_coverage(probs, labels)
    return float((1.0 - accuracy).mean())


def auroc(positive: torch.Tensor | np.ndarray, negative: torch.Tensor | np.ndarray) -> float:
    """``P(s_pos > s_neg) + P(s_pos = s_neg) / 2`` from average ranks (Mann-Whitney U / (n_pos n_neg))."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(positive, dtype=np.float64).ravel(), np.asarray(negative, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ConfigError("AUROC needs at least one positive and one negative score")
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def ood_auroc(probs_in: torch.Tensor, probs_out: torch.Tensor, *, score: str = "max_prob") -> float:
    """AUROC of separating in-distribution (positive) from out-of-distribution inputs by confidence."""
    return auroc(confidence_score(probs_in, score=score), confidence_score(probs_out, score=score))


def uncertainty_metrics(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15,
                        ood: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Accuracy, NLL, ECE, Brier, AURC, accuracy at 80 % and 90 % coverage, and ``ood_auroc_<name>`` for
    each OOD set's probabilities in ``ood``."""
    log_probs = probs.clamp_min(1e-12).log()  # softmax(log p) = p: the calibration metrics take them as logits
    report = calibration_report(log_probs, labels, n_bins=n_bins)
    coverage, accuracy = accuracy_coverage(probs, labels)
    out = {"accuracy": report.accuracy, "nll": report.nll, "ece": report.ece, "brier": report.brier,
           "mean_confidence": report.mean_confidence, "aurc": float((1.0 - accuracy).mean())}
    for c in (0.8, 0.9):
        out[f"accuracy_at_{int(c * 100)}"] = float(accuracy[max(int(np.ceil(c * len(accuracy))) - 1, 0)])
    for name, p_out in (ood or {}).items():
        out[f"ood_auroc_{name}"] = ood_auroc(probs, p_out)
    return out


def plot_accuracy_coverage(curves: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path, *,
                           title: str = "Selective prediction") -> Path:
    """Accuracy-coverage curves, one per method name mapping to ``(probs, labels)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for name, (probs, labels) in curves.items():
        coverage, accuracy = accuracy_coverage(probs, labels)
        ax.plot(coverage, accuracy, label=f"{name} (AURC {aurc(probs, labels):.4f})")
    ax.set_xlabel("coverage (fraction answered, most confident first)")
    ax.set_ylabel("accuracy on the answered inputs")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, Path(path))
