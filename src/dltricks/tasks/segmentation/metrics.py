"""Segmentation metrics on hard masks: pixel accuracy, IoU, Dice / F1, boundary F1.

For a predicted foreground mask ``P`` and the true one ``G`` (sets of pixels):

* pixel accuracy ``= |P == G| / |pixels|`` (both classes; inflated by a large, easy background);
* IoU (Jaccard) ``= |P n G| / |P u G|``;
* Dice = F1 ``= 2 |P n G| / (|P| + |G|) = 2 IoU / (1 + IoU)``;
* boundary F1 (the "BF score" of Csurka, Larlus & Perronnin, BMVC 2013): the boundary of a mask is the
  set of its pixels with a neighbour (8-connected) outside it; a predicted boundary pixel is a hit when a
  true boundary pixel lies within ``tolerance`` pixels (Chebyshev distance) and vice versa:

      precision = |B_P n dilate(B_G, t)| / |B_P|,   recall = |B_G n dilate(B_P, t)| / |B_G|,
      BF = 2 precision recall / (precision + recall)

  It ignores the bulk of a region and asks only whether the contours are in the right place, which is
  what skip connections and high output resolution are for (experiments (b) and (c));
* tolerant Dice: the region version of the same idea, ``precision = |P n dilate(G, t)| / |P|``,
  ``recall = |G n dilate(P, t)| / |G|``, their harmonic mean. With ``t = 0`` it is the Dice score; with
  ``t = 1`` a membrane drawn one pixel thicker or shifted by one pixel is no longer an error, which
  separates "the edge is a pixel off" from "the membrane is missing" (docs/segmentation.md);
* ISBI 2012 pixel error (Arganda-Carreras et al., Front. Neuroanat. 2015): ``1 - max_t F1_t``, the F-score
  of the thresholded probability map against the label PNG's *non-zero* pixels - which for the ISBI labels
  are the cell interiors, not the membranes - maximised over thresholds ``t`` (0.0, 0.1, ..., 1.0 in the
  challenge's Fiji script, ``trainableSegmentation.metrics.PixelError``). This is the "pixel error" of the
  U-Net paper's Table 1 (0.0611 on the challenge's test stack).

Conventions: an image where both masks are empty scores 1 for IoU, Dice and BF (nothing to find, nothing
found). All functions take ``(B, H, W)`` or ``(B, 1, H, W)`` boolean masks and return one value per image;
:func:`binary_segmentation_metrics` turns logits into per-batch *sums* plus ``count`` (the number of images)
for the trainer, which divides by ``count`` - so the reported values are means over images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from dltricks.tasks.segmentation.losses import segmentation_logits

__all__ = ["pixel_accuracy", "iou_score", "dice_score", "tolerant_dice", "mask_boundary", "boundary_f1",
           "boundary_band", "ISBIPixelError", "isbi_pixel_error", "binary_segmentation_metrics", "SegmentationMetrics"]


def _as_masks(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one-channel masks (B, 1, H, W), got {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"expected masks (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    return x.bool()


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # Both empty -> 1 (perfect agreement on "nothing there").
    return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(num))


def pixel_accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels where the masks agree, per image ``(B,)``."""
    pred, target = _as_masks(pred), _as_masks(target)
    return (pred == target).flatten(1).float().mean(1)


def iou_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|P n G| / |P u G|`` per image ``(B,)`` (1 when both are empty)."""
    pred, target = _as_masks(pred), _as_masks(target)
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return _ratio(inter, union)


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``2 |P n G| / (|P| + |G|)`` (= F1 of the foreground pixels) per image ``(B,)``."""
    pred, target = _as_masks(pred), _as_masks(target)
    inter = (pred & target).flatten(1).sum(1).float()
    total = pred.flatten(1).sum(1).float() + target.flatten(1).sum(1).float()
    return _ratio(2 * inter, total)


def _tolerant_f1(pred: torch.Tensor, true: torch.Tensor, tolerance: int) -> torch.Tensor:
    """F1 of two pixel sets ``(B, H, W)`` where a pixel of one counts as matched when the other has a pixel
    within ``tolerance`` (Chebyshev); both empty -> 1, exactly one empty -> 0. Per image ``(B,)``."""
    n_pred = pred.flatten(1).sum(1).float()
    n_true = true.flatten(1).sum(1).float()
    precision = _ratio((pred & _dilate(true, tolerance)).flatten(1).sum(1).float(), n_pred)
    recall = _ratio((true & _dilate(pred, tolerance)).flatten(1).sum(1).float(), n_true)
    # Both empty: precision = recall = 1 (see _ratio), so F1 = 1 without a special case.
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(precision))
    return torch.where((n_pred == 0) ^ (n_true == 0), torch.zeros_like(f1), f1)


def tolerant_dice(pred: torch.Tensor, target: torch.Tensor, *, tolerance: int = 1) -> torch.Tensor:
    """Dice with a ``tolerance`` in pixels (Chebyshev), per image ``(B,)``: a predicted pixel counts as right
    when a true one lies within ``tolerance`` and vice versa (``tolerance=0`` is :func:`dice_score`)."""
    if tolerance < 0:
        raise ValueError(f"tolerance: got {tolerance}, expected a number of pixels >= 0")
    pred, target = _as_masks(pred), _as_masks(target)
    if tolerance == 0:
        return dice_score(pred, target)
    return _tolerant_f1(pred, target, tolerance)


ISBI_THRESHOLDS = tuple(i / 10 for i in range(11))


class ISBIPixelError:
    """Streaming form of :func:`isbi_pixel_error`: ``update`` with batches, ``compute`` at the end.

    Keeps, per threshold, the true positives and predicted positives (pooled over all images), so memory
    does not grow with the number of images.
    """

    def __init__(self, thresholds: tuple[float, ...] = ISBI_THRESHOLDS) -> None:
        if not thresholds:
            raise ValueError("thresholds: expected at least one threshold")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.true_positives = [0] * len(self.thresholds)
        self.predicted = [0] * len(self.thresholds)
        self.positives = 0

    def update(self, probability: torch.Tensor, target: torch.Tensor) -> None:
        prob = probability[:, 0] if probability.dim() == 4 else probability
        true = _as_masks(target)
        if prob.shape != true.shape:
            raise ValueError(f"probability {tuple(probability.shape)} and target {tuple(target.shape)} differ "
                             "in shape")
        self.positives += int(true.sum().item())
        for k, t in enumerate(self.thresholds):
            pred = prob > t
            self.true_positives[k] += int((pred & true).sum().item())
            self.predicted[k] += int(pred.sum().item())

    def compute(self) -> tuple[float, float]:
        """``(pixel error, threshold)``: ``1 - max_t F1_t`` and the first threshold reaching it."""
        best, best_t = -1.0, self.thresholds[0]
        for t, tp, predicted in zip(self.thresholds, self.true_positives, self.predicted):
            denominator = predicted + self.positives
            f1 = 2 * tp / denominator if denominator else 1.0
            if f1 > best:
                best, best_t = f1, t
        return 1.0 - best, best_t


def isbi_pixel_error(probability: torch.Tensor, target: torch.Tensor, *,
                     thresholds: tuple[float, ...] = ISBI_THRESHOLDS) -> tuple[float, float]:
    """The ISBI 2012 challenge's pixel error and the threshold that gives it: ``(1 - max_t F1_t, t*)``.

    ``probability``: ``(B, [1,] H, W)`` probabilities of the label's *non-zero* class (for the ISBI labels, the
    cell interior: pass ``1 - p_membrane``); ``target``: that class's true mask. Pixels are pooled over the
    whole batch (the challenge scores the stack); a pixel is positive when ``probability > t``, as in
    ``trainableSegmentation.metrics.PixelError``.
    """
    metric = ISBIPixelError(thresholds)
    metric.update(probability, target)
    return metric.compute()


def mask_boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of ``mask`` with at least one of their 8 neighbours outside it ``(B, H, W)``.

    Erosion is a min-pool over 3x3; outside the image counts as neither inside nor outside (the pooling
    pads with -inf), so the image border is not a boundary.
    """
    mask = _as_masks(mask)
    m = mask[:, None].float()  # (B, 1, H, W)
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)  # (B, 1, H, W): 1 where the whole 3x3 is inside
    return (m - eroded)[:, 0].bool()


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    m = mask[:, None].float()  # (B, 1, H, W)
    return F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius)[:, 0].bool()


def boundary_f1(pred: torch.Tensor, target: torch.Tensor, *, tolerance: int = 2) -> torch.Tensor:
    """Boundary F1 (BF score) per image ``(B,)`` with a ``tolerance`` in pixels (Chebyshev distance)."""
    return _tolerant_f1(mask_boundary(pred), mask_boundary(target), tolerance)


def boundary_band(target: torch.Tensor, *, width: int = 2) -> torch.Tensor:
    """Pixels within ``width`` (Chebyshev) of the boundary between foreground and background ``(B, H, W)``:
    the region where experiment (c) measures accuracy."""
    target = _as_masks(target)
    edges = mask_boundary(target) | mask_boundary(~target)
    return _dilate(edges, width)


def binary_segmentation_metrics(output: Any, target: torch.Tensor, *, threshold: float = 0.0,
                                tolerance: int = 2,
                                loss_fn: Callable[..., torch.Tensor] | None = None) -> dict[str, float]:
    """Per-batch sums over images of pixel accuracy, IoU, Dice, boundary F1 (foreground = channel 0 > threshold),
    plus ``count`` = number of images and, when ``loss_fn`` is given, ``loss`` = sum of per-image losses.

    Keys: ``pixel_accuracy``, ``iou``, ``dice`` (the foreground class), ``dice_background`` (the other
    class, for reference), ``boundary_f1``, ``loss``, ``count``. Divide by ``count`` for means over images.
    """
    logits = segmentation_logits(output).detach().float()  # (B, 1, H, W)
    if logits.shape[1] != 1:
        raise ValueError(f"binary metrics need one logit channel, got {logits.shape[1]}")
    pred = logits[:, 0] > threshold  # (B, H, W)
    true = target[:, 0].bool() if target.dim() == 4 else target.bool()
    sums = {
        "pixel_accuracy": pixel_accuracy(pred, true).sum().item(),
        "iou": iou_score(pred, true).sum().item(),
        "dice": dice_score(pred, true).sum().item(),
        "dice_background": dice_score(~pred, ~true).sum().item(),
        "boundary_f1": boundary_f1(pred, true, tolerance=tolerance).sum().item(),
        "count": float(pred.shape[0]),
    }
    if loss_fn is not None:
        with torch.no_grad():
            sums["loss"] = float(sum(loss_fn(logits[i:i + 1], target[i:i + 1]).item() for i in range(pred.shape[0])))
    return sums


class SegmentationMetrics:
    """``batch_metrics`` of a binary segmentation task: :func:`binary_segmentation_metrics` with the task's loss."""

    def __init__(self, loss_fn: Callable[..., torch.Tensor] | None = None, *, threshold: float = 0.0,
                 tolerance: int = 2) -> None:
        self.loss_fn, self.threshold, self.tolerance = loss_fn, threshold, tolerance

    def __call__(self, output: Any, target: torch.Tensor) -> dict[str, float]:
        return binary_segmentation_metrics(output, target, threshold=self.threshold, tolerance=self.tolerance,
                                           loss_fn=self.loss_fn)
