"""Small matplotlib helpers for the plots of tip experiments (Agg backend; each writes one PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dltricks.utils.figures import save_figure  # noqa: E402

__all__ = ["bar_plot", "curve_plot", "save"]


def save(fig: plt.Figure, path: Path) -> str:
    """Save ``fig`` atomically as PNG and close it; returns the file name."""
    return save_figure(fig, path, dpi=90).name


def bar_plot(path: Path, arms: Mapping[str, Sequence[float]], *, ylabel: str, title: str,
             log: bool = False) -> str:
    """One bar per arm (mean) with std error bars and each seed as a dot."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(arms) + 1.5), 3.2))
    names = list(arms)
    for i, name in enumerate(names):
        values = np.asarray(arms[name], dtype=float)
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        ax.bar(i, values.mean(), yerr=std, capsize=4, color=f"C{i}", alpha=0.7)
        ax.scatter(np.full(len(values), i), values, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=15 if len(names) > 3 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    return save(fig, path)


def curve_plot(path: Path, curves: Mapping[str, Sequence[Sequence[float]]], *, xlabel: str, ylabel: str,
               title: str, log: bool = False, x: Sequence[float] | None = None) -> str:
    """One line per arm: the mean over seeds, with a band from min to max."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (name, runs) in enumerate(curves.items()):
        length = min(len(r) for r in runs)
        data = np.asarray([r[:length] for r in runs], dtype=float)  # (seeds, steps)
        xs = np.asarray(x[:length] if x is not None else range(1, length + 1), dtype=float)
        ax.plot(xs, data.mean(0), color=f"C{i}", label=name)
        if len(runs) > 1:
            ax.fill_between(xs, data.min(0), data.max(0), color=f"C{i}", alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return save(fig, path)
