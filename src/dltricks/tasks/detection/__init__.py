"""Detection as a task: the focal loss, anchor/point assignment, the RetinaNet, FCOS and Faster R-CNN
objectives, COCO and VOC AP, and the registered ``mnist-detection`` and ``isbi2012-cells`` tasks. The detectors are in
:mod:`dltricks.models.detection`, the box operations in :mod:`dltricks.layers.boxes` and :mod:`dltricks.layers.roi`,
the scenes in :mod:`dltricks.data.detection`. See ``docs/detection.md``.
"""

from dltricks.tasks.detection.losses import (DETRLoss, DetectionLoss, FasterRCNNLoss, FCOSLoss, RetinaNetLoss,
                                             YOLOLoss, assign_points, assign_yolo, match_anchors, sample_balanced,
                                             sigmoid_focal_loss, split_targets)
from dltricks.tasks.detection.matching import hungarian_match
from dltricks.tasks.detection.metrics import coco_evaluate, to_coco_dicts, voc_ap50
from dltricks.tasks.detection.mnist import evaluate_detection, mnist_detection_task  # registers the task
from dltricks.tasks.detection.cells import isbi2012_cells_task  # registers the task

__all__ = ["DETRLoss", "YOLOLoss", "assign_yolo",
           "DetectionLoss", "FasterRCNNLoss", "FCOSLoss", "RetinaNetLoss", "sample_balanced", "assign_points",
           "match_anchors", "sigmoid_focal_loss", "split_targets", "hungarian_match", "coco_evaluate", "to_coco_dicts",
           "voc_ap50", "evaluate_detection", "mnist_detection_task",
           "isbi2012_cells_task"]
