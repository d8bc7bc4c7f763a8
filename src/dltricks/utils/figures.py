"""Saving figures and experiment results: one place for the conventions every plot and JSON file follows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dltricks.utils.io import atomic_write_with

__all__ = ["jsonable", "save_figure"]


def save_figure(fig: Any, path: str | Path, *, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it as PNG to ``path`` atomically (parent folders created), close it and
    return the path. A crash mid-write leaves either the old file or none, never a truncated PNG."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    plt.close(fig)
    return path


def jsonable(obj: Any, *, drop_suffix: str | None = None) -> Any:
    """A copy of nested dicts / lists / tuples that ``json.dumps`` accepts and other tools can read:
    keys become strings, tuples lists, NaN and infinities ``None`` (JSON has no NaN); keys ending with
    ``drop_suffix`` (e.g. ``"_map"`` for per-pixel arrays) are left out."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v, drop_suffix=drop_suffix) for k, v in obj.items()
                if not (drop_suffix and str(k).endswith(drop_suffix))}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, drop_suffix=drop_suffix) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
