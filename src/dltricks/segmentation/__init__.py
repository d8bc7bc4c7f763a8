"""Segmentation toolkit: losses, metrics, sliding-window inference and PNG masks, a compact training loop.

The architectures live in :mod:`dltricks.models.segmentation`, the ISBI 2012 data and task in
:mod:`dltricks.data.isbi`, the experiments in :mod:`dltricks.experiments.segmentation`; see
``docs/segmentation.md``.
"""

from dltricks.segmentation.inference import predict_sliding_window, save_mask_png
from dltricks.segmentation.losses import SegmentationLoss, bce_dice_loss, bce_loss, dice_loss
from dltricks.segmentation.metrics import (SegmentationMetrics, boundary_f1, dice_score, iou_score,
                                           pixel_accuracy)

__all__ = ["predict_sliding_window", "save_mask_png", "SegmentationLoss", "bce_loss", "dice_loss", "bce_dice_loss",
           "SegmentationMetrics", "boundary_f1", "dice_score", "iou_score", "pixel_accuracy"]
