"""Segmentation as a task: losses, metrics, U-Net's weight maps, sliding-window inference, the evaluation
with windows and flips, and the registered ``isbi2012-membrane`` task.

Segmentation lives in two places: the architectures in :mod:`dltricks.models.segmentation` and the task
here (the raw ISBI 2012 slices and their paired augmentation are data, in :mod:`dltricks.data.isbi`); the
experiments are in :mod:`dltricks.experiments.segmentation`. See ``docs/segmentation.md``.
"""

from dltricks.tasks.segmentation.inference import predict_sliding_window, save_mask_png
from dltricks.tasks.segmentation.losses import SegmentationLoss, bce_dice_loss, bce_loss, dice_loss
from dltricks.tasks.segmentation.metrics import (SegmentationMetrics, boundary_f1, dice_score, iou_score,
                                                 pixel_accuracy)
from dltricks.tasks.segmentation.isbi import isbi2012_membrane_task  # registers the task

__all__ = ["predict_sliding_window", "save_mask_png", "SegmentationLoss", "bce_loss", "dice_loss", "bce_dice_loss",
           "SegmentationMetrics", "boundary_f1", "dice_score", "iou_score", "pixel_accuracy", "isbi2012_membrane_task"]
