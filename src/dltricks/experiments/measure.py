"""Measurement experiments for the evidence engine: plain functions returning numbers.

* :func:`flops_vs_latency`: MACs against measured latency for a few registered models. The lecture's
  warning is that MACs do not predict speed: depthwise convolutions, memory-bound elementwise ops,
  many small kernels and branchy graphs cost time that FLOP counts do not see.
* :func:`params_vs_memory`: parameter count against the peak memory of a training step; activations
  kept for the backward pass scale with resolution and batch, not with parameters.
* :func:`receptive_field_comparisons`: the README's convolution tips in numbers - two 3x3 convs see
  what one 5x5 sees with 18 C^2 instead of 25 C^2 weights, three 3x3 vs one 7x7 (27 vs 49), a dilated
  3x3 reaches 5x5 with 9 weights, and striding grows the field faster than dilation or plain stacking
  at equal depth - with the analytic field checked against the exact gradient support and the
  effective width (Luo et al. 2016) alongside.
* :func:`erf_vs_depth`: the effective receptive field of random-init 3x3 stacks grows like sqrt(n).

Each ``plot_*`` function writes a PNG from a result dict.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dltricks.measure.flops import count_flops
from dltricks.measure.latency import measure_latency
from dltricks.measure.memory import peak_memory
from dltricks.measure.params import count_params
from dltricks.measure.receptive_field import (effective_receptive_field, erf_growth, gradient_support, support_box,
                                              trace_receptive_fields)
from dltricks.utils.figures import save_figure

__all__ = ["spearman", "flops_vs_latency", "params_vs_memory", "receptive_field_comparisons", "erf_vs_depth",
           "plot_flops_vs_latency", "plot_params_vs_memory", "plot_receptive_field_comparisons",
           "DEFAULT_MODELS"]

DEFAULT_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "vgg11_bn")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v: Sequence[float]) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # average the ranks of ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _disagreeing(rows: Sequence[dict[str, Any]], x: str, y: str) -> list[tuple[str, str]]:
    pairs = []
    for a, b in itertools.combinations(rows, 2):
        if (a[x] - b[x]) * (a[y] - b[y]) < 0:
            pairs.append((a["model"], b["model"]) if a[x] > b[x] else (b["model"], a["model"]))
    return pairs


def _available(models: Sequence[str]) -> list[str]:
    from dltricks.models._registry import list_models

    known = set(list_models())
    return [m for m in models if m in known]


def _build(name: str) -> nn.Module:
    from dltricks.models._registry import create_model

    torch.manual_seed(0)
    return create_model(name).eval()


def flops_vs_latency(models: Sequence[str] = DEFAULT_MODELS, *, input_size: Sequence[int] = (3, 128, 128),
                     batch: int = 1, min_run_time: float = 0.3, min_runs: int = 5, warmup: int = 2) -> dict[str, Any]:
    """MACs and measured latency (median, IQR) of each registered model, side by side in one process.

    Returns ``rows`` (model, macs, params, latency_ms, latency_iqr_ms, gmacs_per_s: the arithmetic rate
    each model achieves), ``spearman`` (rank correlation of MACs with latency; 1 would mean MACs order
    models exactly as latency does), ``disagreeing_pairs`` ((a, b): a has more MACs but is faster) and
    ``max_rate_ratio`` (fastest / slowest achieved GMAC/s: how far "time = MACs / constant" is off).
    """
    rows = []
    x = torch.randn(batch, *input_size)
    for name in _available(models):
        model = _build(name)
        macs = count_flops(model, x).macs
        t = measure_latency(model, (x,), min_run_time=min_run_time, min_runs=min_runs, warmup=warmup)
        rows.append({"model": name, "macs": macs, "params": count_params(model).total, "latency_ms": t.median * 1e3,
                     "latency_iqr_ms": t.iqr * 1e3, "gmacs_per_s": macs / t.median / 1e9})
        del model
    rates = [r["gmacs_per_s"] for r in rows]
    return {"input": list(input_size), "batch": batch, "threads": torch.get_num_threads(), "rows": rows,
            "spearman": spearman([r["macs"] for r in rows], [r["latency_ms"] for r in rows]),
            "disagreeing_pairs": _disagreeing(rows, "macs", "latency_ms"),
            "max_rate_ratio": max(rates) / min(rates) if rates else float("nan")}


def params_vs_memory(models: Sequence[str] = DEFAULT_MODELS, *, input_size: Sequence[int] = (3, 128, 128),
                     batch: int = 8, optimizer: str = "sgd") -> dict[str, Any]:
    """Parameters against the peak memory of a training step (SGD with momentum) and of inference.

    Returns ``rows`` (model, params, param_mib, train_peak_mib, inference_peak_mib, activation_mib: peak
    minus parameters, gradients and optimizer state, i.e. what the batch's activations and temporaries
    need; ``activation_share``), ``spearman`` of params vs training peak and ``disagreeing_pairs``.
    """
    rows = []
    x = torch.randn(batch, *input_size)
    for name in _available(models):
        model = _build(name)
        p = count_params(model)
        train = peak_memory(model, (x,), mode="train", optimizer=optimizer)
        infer = peak_memory(model, (x,), mode="inference")
        persistent = train.parts.get("params", 0) + train.parts.get("optimizer_state", 0) + p.param_bytes  # + grads
        activation = max(train.peak_bytes - persistent - train.parts.get("buffers", 0) - train.parts.get("inputs", 0),
                         0)
        rows.append({"model": name, "params": p.total, "param_mib": p.param_bytes / 2**20,
                     "train_peak_mib": train.peak_bytes / 2**20, "inference_peak_mib": infer.peak_bytes / 2**20,
                     "activation_mib": activation / 2**20, "activation_share": activation / train.peak_bytes,
                     "method": train.method})
        del model
    return {"input": list(input_size), "batch": batch, "optimizer": optimizer, "rows": rows,
            "spearman": spearman([r["params"] for r in rows], [r["train_peak_mib"] for r in rows]),
            "disagreeing_pairs": _disagreeing(rows, "params", "train_peak_mib")}


def _stack(spec: Sequence[tuple[int, int, int]], channels: int) -> nn.Sequential:
    """Convs from ``(kernel, stride, dilation)`` triples, 'same'-style padding, ReLU between."""
    layers: list[nn.Module] = []
    for i, (k, s, d) in enumerate(spec):
        layers.append(nn.Conv2d(channels, channels, k, stride=s, padding=d * (k - 1) // 2, dilation=d, bias=False))
        if i < len(spec) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


RF_CONFIGS: dict[str, list[tuple[int, int, int]]] = {
    "two 3x3": [(3, 1, 1)] * 2,
    "one 5x5": [(5, 1, 1)],
    "three 3x3": [(3, 1, 1)] * 3,
    "one 7x7": [(7, 1, 1)],
    "3x3 dilation 2": [(3, 1, 2)],
    "four 3x3 (plain)": [(3, 1, 1)] * 4,
    "four 3x3 (dilation 1,2,4,8)": [(3, 1, 1), (3, 1, 2), (3, 1, 4), (3, 1, 8)],
    "four 3x3 (stride 2 each)": [(3, 2, 1)] * 4,
}


def receptive_field_comparisons(*, channels: int = 16, size: int = 64, erf_samples: int = 4,
                                seed: int = 0) -> dict[str, Any]:
    """Receptive field, weights and MACs of the classic alternatives (:data:`RF_CONFIGS`).

    For each configuration: ``rf`` (analytic, traced), ``rf_exact`` (bounding box of the gradient
    support of the centre unit), ``weights`` (conv weights for ``channels`` -> ``channels``), ``macs`` at
    ``size`` x ``size``, ``resolution`` (output side), ``erf_std`` (effective width in pixels, random init).
    Also the weight ratios of the README's claims: ``two3x3_over_5x5`` = 18/25, ``three3x3_over_7x7`` = 27/49.
    """
    torch.manual_seed(seed)
    out: dict[str, Any] = {"channels": channels, "size": size, "configs": {}}
    for name, spec in RF_CONFIGS.items():
        net = _stack(spec, channels).eval()
        shape = (channels, size, size)
        trace = trace_receptive_fields(net, shape)
        rf = trace.output
        exact = support_box(gradient_support(net, shape, units={"": rf.unit})[""])
        exact_size = None if exact is None else exact[2] - exact[0] + 1
        x = torch.randn(1, *shape)
        erf = effective_receptive_field(net, shape, samples=erf_samples, seed=seed)
        out["configs"][name] = {"spec": [list(s) for s in spec], "rf": rf.size[0], "rf_exact": exact_size,
                                "weights": sum(m.weight.numel() for m in net if isinstance(m, nn.Conv2d)),
                                "macs": count_flops(net, x).macs, "resolution": rf.output_shape[-1],
                                "erf_std": 0.5 * (erf.std[0] + erf.std[1])}
    c = out["configs"]
    out["two3x3_over_5x5"] = c["two 3x3"]["weights"] / c["one 5x5"]["weights"]
    out["three3x3_over_7x7"] = c["three 3x3"]["weights"] / c["one 7x7"]["weights"]
    return out


def erf_vs_depth(depths: Sequence[int] = (4, 8, 16, 32), *, channels: int = 16, inits: int = 3, samples: int = 4,
                 seed: int = 0) -> dict[str, Any]:
    """Effective receptive-field width of random-init 3x3 stacks against depth (see
    :func:`dltricks.measure.receptive_field.erf_growth`); ``exponent`` ~ 0.5 confirms Luo et al."""
    return erf_growth(depths, channels=channels, inits=inits, samples=samples, seed=seed)


def _scatter(rows: Sequence[dict[str, Any]], x: str, y: str, pairs: Sequence[tuple[str, str]], path: str | Path,
             xlabel: str, ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.4, 4.2))
    where = {r["model"]: (r[x], r[y]) for r in rows}
    for i, (a, b) in enumerate(pairs):
        (x0, y0), (x1, y1) = where[a], where[b]
        ax.plot([x0, x1], [y0, y1], "--", color="tab:red", linewidth=1, label="orders disagree" if i == 0 else None)
    ax.scatter([r[x] for r in rows], [r[y] for r in rows], zorder=3)
    for r in rows:
        ax.annotate(r["model"], (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if pairs:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_flops_vs_latency(result: dict[str, Any], path: str | Path) -> Path:
    return _scatter(result["rows"], "macs", "latency_ms", result["disagreeing_pairs"], path, "MACs per image",
                    "latency (ms, median)", f"MACs vs latency (Spearman {result['spearman']:.2f})")


def plot_params_vs_memory(result: dict[str, Any], path: str | Path) -> Path:
    return _scatter(result["rows"], "params", "train_peak_mib", result["disagreeing_pairs"], path, "parameters",
                    "peak training-step memory (MiB)", f"Params vs memory (Spearman {result['spearman']:.2f})")


def plot_receptive_field_comparisons(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(result["configs"])
    values = result["configs"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    pos = np.arange(len(names))
    a1.barh(pos - 0.2, [values[n]["rf"] for n in names], height=0.4, label="analytic RF (px)")
    a1.barh(pos + 0.2, [2 * values[n]["erf_std"] for n in names], height=0.4, label="2 x ERF std (px)")
    a1.set_yticks(pos, names, fontsize=7)
    a1.set_xscale("log")
    a1.legend(fontsize=7)
    a1.set_title("receptive field", fontsize=9)
    a2.barh(pos, [values[n]["weights"] for n in names], color="tab:green")
    a2.set_yticks(pos, [""] * len(names))
    a2.set_title(f"conv weights ({result['channels']} -> {result['channels']} channels)", fontsize=9)
    return save_figure(fig, path)
