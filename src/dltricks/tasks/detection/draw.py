"""Detections drawn on their images, for reports and docs: ``dltricks eval RUN --draw FILE``.

Each panel shows one image (grey scale, or RGB for three channels) with the ground-truth boxes as dashed green
rectangles and the predicted boxes above a score threshold as solid rectangles coloured by class, labelled
"class score"; predicted instance masks (Mask R-CNN) are overlaid in the box's colour. The figure is written
to a temporary file first and renamed, so a failed draw leaves no partial image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["draw_detections", "AP_LATENCY_TITLE", "plot_ap_latency"]

AP_LATENCY_TITLE = "COCO AP against CPU latency per scene"


def _image(x: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` -> an array for ``imshow`` scaled to [0, 1] and its colour map."""
    x = x.detach().float().cpu()
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).numpy(), None
    return x[0].numpy(), "gray"


def _write(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def draw_detections(images: torch.Tensor, predictions: Sequence[tuple[Any, ...]],
                    ground_truth: Sequence[tuple[Any, ...]] | None, path: str | Path, *,
                    classes: Sequence[str] | None = None, score_thresh: float = 0.3, columns: int = 4,
                    title: str | None = None) -> Path:
    """Write a grid of ``images (N, C, H, W)`` with their ``predictions`` (per image ``(boxes, scores, labels)``
    or ``(boxes, scores, labels, masks)``) above ``score_thresh`` and ``ground_truth`` (``(boxes, labels)`` per
    image, or None) to ``path`` (PNG, or any format matplotlib writes by its suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    if n == 0:
        raise ValueError("draw_detections needs at least one image")
    if len(predictions) != n or (ground_truth is not None and len(ground_truth) != n):
        raise ValueError(f"{n} images but {len(predictions)} predictions"
                         + ("" if ground_truth is None else f" and {len(ground_truth)} ground truths"))
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows), squeeze=False)
    palette = plt.get_cmap("tab10")
    name = (lambda k: classes[k] if classes is not None and 0 <= k < len(classes) else str(k))  # noqa: E731
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        picture, cmap = _image(images[i])
        ax.imshow(picture, cmap=cmap, interpolation="nearest")
        if ground_truth is not None:
            for box in torch.as_tensor(ground_truth[i][0]).reshape(-1, 4).tolist():
                ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor="lime", linestyle="--", linewidth=1.0))
        boxes, scores, labels = (torch.as_tensor(t) for t in predictions[i][:3])
        masks = predictions[i][3] if len(predictions[i]) > 3 else None
        shown = 0
        for j in range(len(scores)):
            if float(scores[j]) < score_thresh:
                continue
            x1, y1, x2, y2 = boxes[j].tolist()
            colour = palette(int(labels[j]) % 10)
            if masks is not None:
                overlay = np.zeros((*np.asarray(masks[j]).shape, 4))
                overlay[np.asarray(masks[j], dtype=bool)] = (*colour[:3], 0.35)
                ax.imshow(overlay, interpolation="nearest")
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
            ax.text(x1, y1 - 0.5, f"{name(int(labels[j]))} {float(scores[j]):.2f}", color="white", fontsize=6,
                    va="bottom", bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.5, "linewidth": 0})
            shown += 1
        ax.set_title(f"image {i}: {shown} detections", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _write(fig, path)


def plot_ap_latency(points: Sequence[dict[str, Any]], path: str | Path, *, title: str = AP_LATENCY_TITLE) -> Path:
    """Scatter of COCO AP against latency: ``points`` are dicts with ``label``, ``latency`` and ``ap`` (lists
    over seeds); each model is drawn at its means with bars of +- one standard deviation over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("plot_ap_latency needs at least one point")
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for k, p in enumerate(points):
        lat, ap = np.asarray(p["latency"], float), np.asarray(p["ap"], float)
        sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0)  # noqa: E731
        ax.errorbar(lat.mean(), ap.mean(), xerr=sd(lat), yerr=sd(ap), fmt="o", capsize=3,
                    color=plt.get_cmap("tab10")(k % 10), label=f"{p['label']} (n={len(ap)})")
    ax.set_xscale("log")
    ax.set_xlabel("CPU ms per 64 px scene, batch 1, one thread (log scale)")
    ax.set_ylabel("COCO AP@[.5:.95], validation scenes")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _write(fig, path)
