"""Evaluating a binary segmentation model: metrics with sliding windows and flips, masks saved as PNG.

:func:`evaluate_segmentation` is what the ISBI task's own evaluation (``Task.evaluate``, run by ``fit``) and
the segmentation report of ``dltricks eval`` compute: the membrane (foreground) Dice, IoU, pixel accuracy,
boundary F1, the accuracy near boundaries and the ISBI pixel error, optionally with sliding-window inference
and test-time flips. :func:`save_predicted_masks` writes the predictions as PNG files in the data set's own
convention (for ISBI 2012 membrane black, interior white).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltricks.errors import ConfigError
from dltricks.tasks.segmentation.inference import predict_sliding_window, save_mask_png
from dltricks.tasks.segmentation.losses import segmentation_logits
from dltricks.tasks.segmentation.metrics import (ISBIPixelError, boundary_band, boundary_f1, dice_score, iou_score,
                                                 pixel_accuracy, tolerant_dice)

__all__ = ["is_segmentation_task", "segmentation_report", "save_predicted_masks", "evaluate_segmentation"]


def is_segmentation_task(task: Any) -> bool:
    return getattr(task, "extra", {}).get("task_type") == "segmentation"


def segmentation_report(model: nn.Module, task: Any, *, split: str = "val", window: int | None = None,
                        overlap: float = 0.5, tta: bool = False) -> dict[str, Any]:
    """Metrics of ``model`` on the whole images of ``task``'s validation split, or of its training split
    (``split="train"``: the training images whole and unaugmented, ``task.extra["train_eval_loader"]``)."""
    loader = _eval_loader(task, split)
    if window is not None and window < 1:
        raise ConfigError(f"--window: got {window}, expected a positive tile size in pixels")
    if not 0 <= overlap < 1:
        raise ConfigError(f"--overlap: got {overlap}, expected a number in [0, 1)")
    metrics = evaluate_segmentation(model, loader, window=window, overlap=overlap, tta=tta)
    return {"data": task.name, "split": split, "foreground": task.extra.get("foreground", "class 1"),
            "window": window, "overlap": overlap if window else None, "tta": tta, **metrics}


def _eval_loader(task: Any, split: str) -> Any:
    if split == "val":
        return task.val_loader
    if split == "train" and task.extra.get("train_eval_loader") is not None:
        return task.extra["train_eval_loader"]
    raise ConfigError(f"split {split!r}: data set {task.name} offers whole-image evaluation of "
                      f"{'val and train' if task.extra.get('train_eval_loader') is not None else 'val'} only")


def save_predicted_masks(model: nn.Module, task: Any, folder: str | Path, *, window: int | None = None,
                         overlap: float = 0.5, tta: bool = False, split: str = "val") -> list[Path]:
    """Predict every image of ``split`` and write ``<id>.png`` masks into ``folder``.

    ISBI 2012 masks use the data set's convention (foreground = membrane = 0, background = 255).
    """
    with torch.no_grad():  # a context, not a decorator: mutmut skips decorated functions
        folder = Path(folder)
        loader = _eval_loader(task, split)
        ids = list(task.extra.get("val_slices" if split == "val" else "train_slices") or [])
        membrane_black = task.extra.get("foreground") == "membrane"
        written: list[Path] = []
        model.eval()
        index = 0
        for x, _ in loader.iter_epoch(0):
            if window is not None or tta:
                logits = predict_sliding_window(model, x, window=window or max(x.shape[-2:]), overlap=overlap, tta=tta)
            else:
                logits = model(x)
            for mask in (logits[:, 0] > 0).cpu():
                name = ids[index] if index < len(ids) else str(index)
                path = folder / f"{name}.png"
                save_mask_png(mask, path, foreground=0 if membrane_black else 255,
                              background=255 if membrane_black else 0)
                written.append(path)
                index += 1
        return written


def evaluate_segmentation(model: nn.Module, loader: Any, *, window: int | None = None, overlap: float = 0.5,
                          tta: bool = False, band_width: int = 2, tolerance: int = 2,
                          loss_fn: Any = None, device: torch.device | str | None = None) -> dict[str, float]:
    """Metrics of a binary (one-logit) model over a loader of whole images, means over images.

    ``window`` switches to :func:`predict_sliding_window` (with ``overlap`` and ``tta``); otherwise each
    image goes through the model whole (``tta`` then averages the 8 dihedral transforms of the whole image).

    Returns ``dice``, ``iou``, ``pixel_accuracy``, ``boundary_f1`` (tolerance in pixels), ``dice_background``,
    ``dice_pooled`` (Dice of all pixels of all images at once), ``dice_tolerance1`` (:func:`tolerant_dice` with
    one pixel of tolerance), ``boundary_accuracy`` (pixel accuracy inside the band of ``band_width`` pixels
    around the true boundaries), ``interior_accuracy`` (outside that band), ``isbi_pixel_error`` and
    ``isbi_threshold`` (the ISBI 2012 challenge's metric, :func:`isbi_pixel_error`: 1 - max F-score of the
    *background* class, the cell interiors, over thresholds 0.0 ... 1.0, pooled over all images) and ``images``;
    with ``loss_fn(logits, target)`` also ``loss``, its mean over images. ``device``: where the images go
    (default: where the model is).
    """
    with torch.no_grad():  # a context, not a decorator: mutmut skips decorated functions
        model.eval()
        sums: dict[str, float] = {}
        inter = total = 0.0
        band_hits = band_count = rest_hits = rest_count = 0.0
        count = 0
        pixel_error = ISBIPixelError()
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for x, y in loader.iter_epoch(0):
            x, y = x.to(device), y.to(device)
            if window is not None:
                logits = predict_sliding_window(model, x, window=window, overlap=overlap, tta=tta)
            elif tta:
                logits = predict_sliding_window(model, x, window=max(x.shape[-2:]), overlap=0.0, tta=True)
            else:
                logits = segmentation_logits(model(x)).float()
            if loss_fn is not None:
                sums["loss"] = sums.get("loss", 0.0) + float(loss_fn(logits, y)) * logits.shape[0]
            pred = logits[:, 0] > 0  # (B, H, W)
            true = y[:, 0] > 0.5
            for key, fn in (("dice", dice_score), ("iou", iou_score), ("pixel_accuracy", pixel_accuracy)):
                sums[key] = sums.get(key, 0.0) + fn(pred, true).sum().item()
            sums["dice_background"] = sums.get("dice_background", 0.0) + dice_score(~pred, ~true).sum().item()
            for key, value in (("boundary_f1", boundary_f1(pred, true, tolerance=tolerance)),
                               ("dice_tolerance1", tolerant_dice(pred, true, tolerance=1))):
                sums[key] = sums.get(key, 0.0) + value.sum().item()
            pixel_error.update(torch.sigmoid(-logits[:, 0]), ~true)  # p(cell interior) = 1 - p(membrane), (B, H, W)
            inter += (pred & true).sum().item()
            total += pred.sum().item() + true.sum().item()
            band = boundary_band(true, width=band_width)
            correct = pred == true
            band_hits += (correct & band).sum().item()
            band_count += band.sum().item()
            rest_hits += (correct & ~band).sum().item()
            rest_count += (~band).sum().item()
            count += pred.shape[0]
        result = {k: v / max(count, 1) for k, v in sums.items()}
        result["dice_pooled"] = 2 * inter / total if total else 1.0
        result["boundary_accuracy"] = band_hits / band_count if band_count else 1.0
        result["interior_accuracy"] = rest_hits / rest_count if rest_count else 1.0
        if count:
            result["isbi_pixel_error"], result["isbi_threshold"] = pixel_error.compute()
        result["images"] = float(count)
        return result
