"""YOLO-style one-stage detection on a single grid: objectness, class and box per anchor per cell.

Papers: Redmon, Divvala, Girshick & Farhadi, "You Only Look Once: Unified, Real-Time Object Detection",
CVPR 2016 (YOLOv1: one grid, each object belongs to the cell holding its centre); Redmon & Farhadi,
"YOLO9000: Better, Faster, Stronger", CVPR 2017 (YOLOv2: anchor priors per cell, direct location prediction).

**Grid and anchors.** One map of stride ``s`` (default 8: an 8 x 8 grid on 64 px) carries ``A`` anchor
priors per cell, given as widths and heights. YOLOv2 picks them by k-means on the training boxes with
``1 - IoU`` as the distance; on the 7,981 boxes of the 4,000 MNIST training scenes that gives
``(8, 14), (12, 14), (15, 19)`` px (mean best IoU 0.80), the defaults here.

**Prediction** (YOLOv2 Sec. "Direct location prediction"). For the cell in column ``j``, row ``i`` and an
anchor of size ``(p_w, p_h)``, the head's ``(t_x, t_y, t_w, t_h)`` give the box

    b_x = (j + sigmoid(t_x)) s,   b_y = (i + sigmoid(t_y)) s,   b_w = p_w exp(t_w),   b_h = p_h exp(t_h)

so a centre cannot leave its cell. Each anchor also has an objectness logit and ``K`` class logits; the
score of class ``c`` is ``sigmoid(obj) softmax(cls)_c``.

**Targets and loss** (:class:`dltricks.tasks.detection.losses.YOLOLoss`). A box is assigned to the cell
holding its centre and, there, to the anchor whose shape (both centred at one point) has the highest IoU with
it; when two boxes want the same anchor the later one keeps it. Per image the loss sums

    5 * SE(sigmoid(t_xy), offset in the cell) + 5 * SE(t_wh, log(b_wh / p_wh))     (assigned anchors)
    + BCE(obj, 1) (assigned)  + 0.5 * BCE(obj, 0) (the others)  + CE(cls, c)  (assigned)

(YOLOv1 Eq. 3's weights lambda_coord = 5 and lambda_noobj = 0.5; BCE and a softmax cross-entropy in place
of its squared errors, as in later YOLOs). An unassigned anchor whose decoded box already overlaps a
ground-truth box by IoU > 0.6 is left out of the objectness term (YOLOv2's ignore rule). The loss is the
mean over images.

**Grid size, measured.** With the benchmark recipe (``benchmarks/detection_mnist.py``, 3 epochs, seed 0,
n = 1) a stride-16 grid (4 x 4 cells of 16 px on a 3-stage backbone) reached COCO mAP 0.04 (AP50 0.12) and the
stride-8 grid 0.43 (AP50 0.76): with 16 px cells a digit's box (at most 20 px) covers about one cell, and
two digits often share one. Hence the default stride 8, though its backbone has only two stages.

**Measured** (``benchmarks/detection_mnist.py yolo_tiny 10 0``, n = 1, docs/detection.md): COCO mAP 0.543,
AP50 0.900, AP75 0.602 on the 500 validation scenes (RetinaNet 0.570 / 0.856, FCOS 0.580 / 0.821 with the
same recipe). Its training loss ended at 0.43 and its validation loss at 1.93: with one positive anchor per
box it overfits the 4,000 scenes.

**Post-processing.** As the other one-stage detectors (:func:`~dltricks.models.detection.base.select_detections`):
scores above 0.05, class-wise NMS at IoU 0.5, the best 100.

**Output.** ``logits (B, N, K)``, ``objectness (B, N, 1)``, ``offsets (B, N, 4)`` (the raw ``t``),
``priors (B, N, 4)`` (each anchor's box xyxy centred on its cell) and ``strides (B, N, 1)``, for ``N = h w A``
locations ordered row, column, anchor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dltricks.errors import ModelError
from dltricks.layers.boxes import BBOX_CLAMP, anchor_grid
from dltricks.models._registry import register_model
from dltricks.models.detection.base import (DenseDetector, backbone_for_stride, flatten_levels, head_tower,
                                            init_head)

__all__ = ["YOLO", "yolo_tiny", "decode_yolo"]

PAPER = "Redmon et al., You Only Look Once, CVPR 2016; Redmon & Farhadi, YOLO9000, CVPR 2017"
MNIST_ANCHORS = ((8.0, 14.0), (12.0, 14.0), (15.0, 19.0))


def decode_yolo(offsets: torch.Tensor, priors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Boxes ``(..., 4)`` xyxy from raw offsets ``(..., 4)``, prior boxes ``(..., 4)`` and strides ``(..., 1)``
    (the equations of the module docstring)."""
    corner = (priors[..., :2] + priors[..., 2:]) / 2 - strides / 2  # the cell's top-left corner (j s, i s)
    prior_wh = priors[..., 2:] - priors[..., :2]
    centre = corner + offsets[..., :2].sigmoid() * strides
    wh = prior_wh * offsets[..., 2:].clamp(max=BBOX_CLAMP).exp()
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=-1)


class YOLO(DenseDetector):
    """A YOLOv2-style single-grid detector (see the module docstring).

    Args:
        num_classes, in_chans: object classes and image channels.
        backbone: a ResNet with ``forward_features_list`` (default: :func:`backbone_for_stride` at ``stride``).
        stride: the grid's stride (8, 16 or 32).
        anchors: ``(w, h)`` priors in pixels.
        channels, num_convs: width of the 1x1 projection and depth of the shared 3x3 conv tower.
        prior: initial objectness probability.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, backbone: nn.Module | None = None,
                 stride: int = 8, anchors: Sequence[tuple[float, float]] = MNIST_ANCHORS, channels: int = 64,
                 num_convs: int = 2, prior: float = 0.01) -> None:
        if not anchors or any(len(a) != 2 or min(a) <= 0 for a in anchors):
            raise ModelError(f"YOLO needs anchors as positive (w, h) pairs, got {anchors}")
        super().__init__(num_classes=num_classes, in_chans=in_chans,
                         backbone=backbone if backbone is not None else backbone_for_stride(in_chans, stride),
                         pyramid_strides=(stride,), pyramid_chs=channels)
        self.anchor_wh = tuple((float(w), float(h)) for w, h in anchors)
        self.num_anchors = len(self.anchor_wh)
        self.tower = head_tower(channels, num_convs)
        self.obj_out = nn.Conv2d(channels, self.num_anchors, 3, padding=1)
        self.cls_out = nn.Conv2d(channels, self.num_anchors * num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(channels, self.num_anchors * 4, 3, padding=1)
        init_head(nn.ModuleList([self.tower, self.obj_out, self.cls_out, self.box_out]), prior=prior,
                  cls_layer=self.obj_out)

    def priors(self, size: tuple[int, int], *, device: torch.device | None = None) -> torch.Tensor:
        """Prior boxes ``(h * w * A, 4)`` xyxy: every anchor shape centred on every cell of an ``h x w`` grid."""
        # anchor_grid takes sizes sqrt(w h) and ratios h / w; one (size, ratio) pair per anchor.
        per_anchor = [anchor_grid([size], self.strides, [[(w * h) ** 0.5]], [h / w], device=device)
                      for w, h in self.anchor_wh]  # A x (h * w, 4)
        return torch.stack(per_anchor, dim=1).reshape(-1, 4)  # (h * w, A, 4) -> (h * w * A, 4)

    def forward_head(self, pyramid: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        feat = self.tower(pyramid[0])  # (B, D, h, w)
        logits = flatten_levels([self.cls_out(feat)], self.num_classes)  # (B, h * w * A, K)
        B = logits.shape[0]
        priors = self.priors(tuple(feat.shape[-2:]), device=feat.device)  # (N, 4)
        strides = torch.full((len(priors), 1), float(self.strides[0]), device=feat.device)
        return {"logits": logits, "objectness": flatten_levels([self.obj_out(feat)], 1),
                "offsets": flatten_levels([self.box_out(feat)], 4), "priors": priors.expand(B, -1, -1),
                "strides": strides.expand(B, -1, -1)}

    @staticmethod
    def decode(output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(B, N, 4)`` xyxy and scores ``(B, N, K)``: objectness times the class softmax."""
        boxes = decode_yolo(output["offsets"].float(), output["priors"].float(), output["strides"].float())
        scores = output["objectness"].float().sigmoid() * output["logits"].float().softmax(-1)
        return boxes, scores


@register_model(task="detection", input_size=(1, 64, 64), test_input_size=(1, 64, 64), min_input_size=32,
                paper=PAPER)
def yolo_tiny(*, num_classes: int = 10, in_chans: int = 1, **kwargs) -> YOLO:
    """YOLO-style detector for 64 px MNIST scenes: 2-stage small ResNet (widths 16, 32), one stride-8 grid
    (8 x 8 cells), 3 k-means anchors per cell, a 2-conv head."""
    return YOLO(num_classes=num_classes, in_chans=in_chans, **kwargs)
