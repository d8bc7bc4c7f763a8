"""Set matching for DETR-style losses (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020).

DETR predicts a fixed set of ``Q`` boxes and matches them one-to-one to the ``M <= Q`` ground-truth boxes by the
assignment of least total cost (the Hungarian algorithm, here ``scipy.optimize.linear_sum_assignment``):

    cost(q, m) = - w_class p_q(c_m) + w_L1 ||b_q - b_m||_1 - w_GIoU GIoU(b_q, b_m)

(the paper: ``w_class = 1``, ``w_L1 = 5``, ``w_GIoU = 2``; L1 on normalised ``cxcywh`` boxes). Unmatched queries
are trained towards "no object". ``tests/test_det_boxes.py`` checks the matching against every permutation.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from dltricks.layers.boxes import box_convert, generalized_box_iou

__all__ = ["hungarian_cost", "hungarian_match"]


def hungarian_cost(probs: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, *,
                   class_weight: float = 1.0, l1_weight: float = 5.0, giou_weight: float = 2.0) -> torch.Tensor:
    """Cost ``(Q, M)`` of matching query ``q`` (class probabilities ``(Q, K)``, xyxy box) to ground truth ``m``."""
    cost_class = -probs[:, gt_labels]  # (Q, M)
    cost_l1 = torch.cdist(box_convert(boxes, "xyxy", "cxcywh"), box_convert(gt_boxes, "xyxy", "cxcywh"), p=1)
    cost_giou = -generalized_box_iou(boxes, gt_boxes)
    return class_weight * cost_class + l1_weight * cost_l1 + giou_weight * cost_giou


def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and ground-truth indices ``(min(Q, M),)`` of the minimum-cost one-to-one assignment."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
