"""Segmentation losses: binary cross-entropy, soft Dice, and their sum.

Notation: ``z`` the logits, ``p = sigmoid(z)`` (binary, one output channel) or ``softmax(z)`` over classes,
``y`` the target (``{0, 1}`` per pixel, or one-hot over classes), sums over pixels (and images).

* **BCE** (per pixel, averaged): ``-[y log p + (1 - y) log(1 - p)]``. Calibrated, but with a rare
  foreground (22 % membrane pixels on ISBI 2012) its gradient is dominated by the majority class.
* **Soft Dice** (Milletari, Navab & Ahmadi, "V-Net", 3DV 2016, Eq. 1; the ``squared=False`` form of
  Sudre et al. 2017): ``1 - (2 sum p y + eps) / (sum p + sum y + eps)``. It scores the overlap of
  the foreground alone, so class imbalance does not matter, but its gradient is noisy when the
  foreground is small and it says nothing about calibration. ``squared=True`` uses ``sum p^2 + sum y^2``
  in the denominator, as in V-Net. ``per_image=True`` averages one Dice per image instead of pooling
  the pixels of the whole batch.
* **BCE + Dice**: the sum of the two (weights ``bce_weight``, ``dice_weight``), the usual
  compromise: the BCE term gives smooth per-pixel gradients, the Dice term counters the imbalance.
* **Pixel weights** (U-Net, Ronneberger et al. 2015, Eq. 1): ``mean_x w(x) * BCE(x)`` with a weight map
  ``w`` (:mod:`dltricks.tasks.segmentation.weights`). A binary target may carry it as a second channel,
  ``(B, 2, H, W)`` = (mask, weight); :class:`SegmentationLoss` then weights the cross-entropy term (the
  Dice term stays unweighted).

Multi-class outputs (``C >= 2``, integer targets ``(B, H, W)``) use softmax cross-entropy and the mean
soft Dice over classes. ``tests/test_seg_losses.py`` checks each against the formula written out
longhand and against ``F.binary_cross_entropy`` / ``F.cross_entropy``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dltricks.errors import ConfigError, did_you_mean

__all__ = ["LOSSES", "bce_loss", "dice_loss", "bce_dice_loss", "SegmentationLoss", "segmentation_logits"]

LOSSES = ("bce", "dice", "bce+dice")


def segmentation_logits(output: Any) -> torch.Tensor:
    """Main logits of a model output (a tensor, or the first element of a tuple / ``output["logits"]``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return segmentation_logits(output[0])
    if isinstance(output, dict):
        return output["logits"]
    raise TypeError(f"cannot find logits in model output of type {type(output).__name__}")


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"segmentation logits must be (B, C, H, W), got {tuple(logits.shape)}")
    if logits.shape[1] == 1 and target.shape != logits.shape:
        raise ValueError(f"binary target must match the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    if logits.shape[1] > 1 and (target.shape != (logits.shape[0], *logits.shape[2:])):
        raise ValueError(f"multi-class target must be class indices {(logits.shape[0], *logits.shape[2:])}, "
                         f"got {tuple(target.shape)}")


def bce_loss(logits: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-pixel cross-entropy: sigmoid BCE for one channel, softmax CE for several.

    ``label_smoothing`` moves binary targets to ``y (1 - eps) + eps / 2`` (and is passed to
    ``F.cross_entropy`` for several classes). ``weight`` (binary only, the logits' shape): per-pixel
    weights, ``mean(w * BCE)``.
    """
    _check(logits, target)
    logits = logits.float()
    if logits.shape[1] == 1:
        y = target.float()
        if label_smoothing:
            y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
        if weight is not None and weight.shape != logits.shape:
            raise ValueError(f"pixel weights must match the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(weight.shape)}")
        return F.binary_cross_entropy_with_logits(logits, y, weight=None if weight is None else weight.float())
    if weight is not None:
        raise ValueError("pixel weights are supported for binary (one-channel) outputs only")
    return F.cross_entropy(logits, target.long(), label_smoothing=label_smoothing)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1.0, squared: bool = False,
              per_image: bool = False) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 sum p y + eps) / (sum p + sum y + eps)`` (mean over classes for C >= 2).

    Sums run over the whole batch (``per_image=False``) or per image and are then averaged. ``eps``
    (1 by default, in pixel units) keeps the ratio defined for empty masks and damps its gradient there.
    """
    _check(logits, target)
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)  # (B, 1, H, W)
        y = target.float()
    else:
        p = torch.softmax(logits, dim=1)  # (B, C, H, W)
        y = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()  # (B, C, H, W)
    dims = (2, 3) if per_image else (0, 2, 3)
    intersection = (p * y).sum(dims)  # (B, C) or (C,)
    denominator = (p * p).sum(dims) + (y * y).sum(dims) if squared else p.sum(dims) + y.sum(dims)
    dice = (2.0 * intersection + eps) / (denominator + eps)
    return 1.0 - dice.mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 1.0, dice_weight: float = 1.0,
                  label_smoothing: float = 0.0, weight: torch.Tensor | None = None,
                  **dice_kwargs: Any) -> torch.Tensor:
    """``bce_weight * BCE + dice_weight * soft Dice`` (``weight``: per-pixel weights of the BCE term)."""
    return (bce_weight * bce_loss(logits, target, label_smoothing=label_smoothing, weight=weight)
            + dice_weight * dice_loss(logits, target, **dice_kwargs))


class SegmentationLoss:
    """The loss of a segmentation task, by name: ``"bce"``, ``"dice"`` or ``"bce+dice"``.

    Called as ``loss(output, target, *, label_smoothing=0.0)`` (the trainer's loss signature); model outputs
    with auxiliary heads contribute only their main logits. A binary ``target`` of shape ``(B, 2, H, W)``
    is (mask, pixel weight): the weights apply to the cross-entropy term.
    """

    def __init__(self, kind: str = "bce+dice", *, bce_weight: float = 1.0, dice_weight: float = 1.0,
                 eps: float = 1.0) -> None:
        if kind not in LOSSES:
            raise ConfigError(f"unknown segmentation loss {kind!r}.{did_you_mean(kind, LOSSES)} "
                              f"Expected one of: {', '.join(LOSSES)}")
        self.kind, self.bce_weight, self.dice_weight, self.eps = kind, bce_weight, dice_weight, eps

    def __call__(self, output: Any, target: torch.Tensor, *, label_smoothing: float = 0.0, **_: Any) -> torch.Tensor:
        logits = segmentation_logits(output)
        weight = None
        if logits.dim() == 4 and logits.shape[1] == 1 and target.dim() == 4 and target.shape[1] == 2:
            target, weight = target[:, :1], target[:, 1:]  # (B, 1, H, W) mask, (B, 1, H, W) pixel weight
        if self.kind == "bce":
            return bce_loss(logits, target, label_smoothing=label_smoothing, weight=weight)
        if self.kind == "dice":
            if weight is not None:
                raise ValueError("the Dice loss takes no pixel weights; use 'bce' or 'bce+dice'")
            return dice_loss(logits, target, eps=self.eps)
        return bce_dice_loss(logits, target, bce_weight=self.bce_weight, dice_weight=self.dice_weight,
                             label_smoothing=label_smoothing, weight=weight, eps=self.eps)

    def __repr__(self) -> str:
        return f"SegmentationLoss({self.kind!r})"
