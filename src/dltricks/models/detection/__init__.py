"""Object detectors: one contract (backbone -> feature pyramid -> dense head, :mod:`.base`), two families.

* :mod:`.retinanet`: ``retinanet_tiny`` (MNIST-detection size) and ``retinanet_resnet18`` (Lin et al. 2017);
* :mod:`.fcos`: ``fcos_tiny`` and ``fcos_resnet18`` (Tian et al. 2019), anchor-free;
* :mod:`.faster_rcnn`: ``faster_rcnn_tiny`` (Ren et al. 2015, with an FPN and RoIAlign), two-stage;
* :mod:`.mask_rcnn`: ``mask_rcnn_tiny`` (He et al. 2017), Faster R-CNN plus a per-box mask head;
* :mod:`.yolo`: ``yolo_tiny`` (Redmon et al. 2016/2017), anchors on one grid;
* :mod:`.detr`: ``detr_tiny`` (Carion et al. 2020), a Transformer predicting a set of boxes (per query, no NMS);
* :mod:`.sliding_window`: ``sliding_window_tiny``, the pre-R-CNN baseline: a CNN classifies every window.

Every model is registered with ``task="detection"`` and returns a dict of dense per-location tensors (class
logits, box regression and the anchors or points they refer to); ``model.predict(x)`` gives per-image
``(boxes, scores, labels)``. Losses, matching, the COCO evaluation and the ``mnist-detection`` task live in
:mod:`dltricks.tasks.detection`; box operations in :mod:`dltricks.layers.boxes`. See ``docs/detection.md``.
"""

from dltricks.models.detection.base import DenseDetector, FeaturePyramid, select_detections, small_resnet
from dltricks.models.detection import retinanet, fcos, faster_rcnn  # noqa: F401  (register the models)
from dltricks.models.detection.retinanet import RetinaNet
from dltricks.models.detection.fcos import FCOS
from dltricks.models.detection.faster_rcnn import FasterRCNN
from dltricks.models.detection.mask_rcnn import MaskRCNN  # registers mask_rcnn_tiny
from dltricks.models.detection.detr import DETR
from dltricks.models.detection.yolo import YOLO
from dltricks.models.detection.sliding_window import SlidingWindow  # registers sliding_window_tiny

__all__ = ["DenseDetector", "FeaturePyramid", "select_detections", "small_resnet", "RetinaNet", "FCOS",
           "FasterRCNN", "MaskRCNN", "DETR", "YOLO", "SlidingWindow"]
