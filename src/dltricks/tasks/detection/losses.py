"""Detection losses: the focal loss, anchor and point assignment, and the RetinaNet and FCOS objectives.

Both objectives take the model's output dict (:mod:`dltricks.models.detection`) and the padded targets
``(B, M, 5)`` of :mod:`dltricks.data.detection` (rows ``x1, y1, x2, y2, label``, label -1 = padding), so they
plug into ``fit`` as a task's ``loss``.

**Focal loss** (Lin et al. 2017, Eq. 5): with ``p`` the sigmoid probability and ``p_t = p`` for the true
class, ``1 - p`` otherwise,

    FL = -alpha_t (1 - p_t)^gamma log(p_t),     alpha_t = alpha for positives, 1 - alpha for negatives

summed over all (location, class) pairs and divided by the number of positive locations. ``gamma = 0`` and
``alpha = -1`` (no weighting) is plain binary cross-entropy.

**RetinaNet assignment** (:func:`match_anchors`): an anchor whose best IoU with a ground-truth box is at
least 0.5 is positive for that box, below 0.4 negative, in between ignored; each box's best anchor is also
made positive, so a small object always has one (Faster R-CNN's rule, kept in torchvision's RetinaNet).
Positives regress their box with smooth-L1 (beta 1/9) on the encoded deltas.

**FCOS assignment** (:func:`assign_points`): a point is positive for a box when it lies within
``center_radius`` strides of the box centre and inside the box, and the box's ``max(l, t, r, b)`` from that
point falls in the level's size range; among several candidate boxes the smallest wins. Positives add the
GIoU loss (``1 - GIoU``) of their decoded box and the BCE of their centre-ness.

**Faster R-CNN** (Ren et al. 2015, Eq. 1 and Sec. 3.1.3; :class:`FasterRCNNLoss`). The RPN: anchors with IoU
>= 0.7 are positive (plus each box's best anchors), < 0.3 negative; per image 256 anchors are sampled, at
most half positive, and the loss is the BCE of their objectness plus smooth-L1 (beta 1/9) on the positives'
deltas, both divided by the number sampled. The RoI head: proposals with IoU >= 0.5 take their box's class,
the others are background (class ``K``); per image the valid proposals are sampled with at most 25%
foreground (Fast R-CNN Sec. 2.3), and the loss is the cross-entropy plus smooth-L1 on the foreground's
class-specific deltas (weights ``(10, 10, 5, 5)``), both divided by the number sampled. Sampling draws from
the global generator, which ``fit`` seeds.

**Mask R-CNN** (He et al. 2017, Sec. 3; :class:`MaskRCNNLoss`): Faster R-CNN's four terms plus the mean
per-pixel BCE of the matched class's ``28 x 28`` mask logits on the sampled foreground proposals, against
:func:`mask_targets` (the ground-truth mask cut out at the proposal by RoIAlign, thresholded at 0.5). Its
targets are ``(targets, instances)``; :class:`DetectionLoss` gives the other objectives the boxes alone.

**Sliding windows** (:class:`SlidingWindowLoss`, :func:`label_windows`): a window with IoU >= 0.5 to a box
takes its class, every other one is background; among the windows the model classified (in training, the
sample of :meth:`SlidingWindow.sample_windows`) at most 128 per image are taken, at most a quarter foreground,
and the loss is their mean cross-entropy plus the smooth-L1 loss (beta 1/9) of the foreground windows'
class-agnostic deltas (weights ``(10, 10, 5, 5)``), both divided by the number taken.

**YOLO** (:class:`YOLOLoss`, :func:`assign_yolo`) and **DETR** (:class:`DETRLoss`, the Hungarian loss): the
equations are in :mod:`dltricks.models.detection.yolo` and :mod:`dltricks.models.detection.detr`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dltricks.data.detection import split_batch
from dltricks.layers.boxes import box_area, box_convert, box_iou, encode_boxes, generalized_box_iou
from dltricks.layers.roi import roi_align
from dltricks.models.detection.base import sample_balanced
from dltricks.models.detection.faster_rcnn import ROI_BOX_WEIGHTS
from dltricks.models.detection.sliding_window import label_windows
from dltricks.models.detection.yolo import decode_yolo
from dltricks.tasks.detection.matching import hungarian_cost, hungarian_match

__all__ = ["sigmoid_focal_loss", "match_anchors", "assign_points", "RetinaNetLoss", "FCOSLoss", "FasterRCNNLoss",
           "DETRLoss", "YOLOLoss", "assign_yolo", "DetectionLoss", "split_targets", "check_targets", "sample_balanced",
           "MaskRCNNLoss", "mask_targets", "SlidingWindowLoss", "label_windows"]



def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal loss (not reduced) of logits against 0/1 targets of the same shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma if gamma else ce
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def check_targets(targets: torch.Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` for targets that are not ``(B, M, 5)`` or carry a label outside the head."""
    if targets.dim() != 3 or targets.shape[-1] != 5:
        raise ValueError("detection targets must be (B, M, 5) rows (x1, y1, x2, y2, label), got "
                         f"{tuple(targets.shape)}")
    labels = targets[..., 4]
    bad = (labels >= num_classes) | (labels < -1) | ~torch.isfinite(targets).all(-1)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"detection target {j} of image {i} is {targets[i, j].tolist()}: its label must be in "
                         f"[0, {num_classes}) for a head with num_classes={num_classes} (-1 = padding) and its "
                         "coordinates finite")
    bad = (labels >= 0) & ((targets[..., 2] <= targets[..., 0]) | (targets[..., 3] <= targets[..., 1]))
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"detection target {j} of image {i} is {targets[i, j].tolist()}: a box needs x2 > x1 and "
                         "y2 > y1 (rows x1, y1, x2, y2, label)")


def split_targets(targets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-image ``(boxes (n, 4), labels (n,) int64)`` with the padding removed."""
    out = []
    for rows in targets:
        rows = rows[rows[:, 4] >= 0]
        out.append((rows[:, :4], rows[:, 4].long()))
    return out


def match_anchors(anchors: torch.Tensor, boxes: torch.Tensor, *, fg_iou: float = 0.5, bg_iou: float = 0.4,
                  low_quality: bool = True) -> torch.Tensor:
    """Index ``(N,)`` of each anchor's box: ``>= 0`` positive, ``-1`` background, ``-2`` ignored."""
    N = len(anchors)
    if len(boxes) == 0:
        return torch.full((N,), -1, dtype=torch.long, device=anchors.device)
    iou = box_iou(boxes, anchors)  # (M, N)
    best_iou, best_box = iou.max(dim=0)  # per anchor
    matched = best_box.clone()
    matched[best_iou < fg_iou] = -2
    matched[best_iou < bg_iou] = -1
    if low_quality:
        # Every box's best anchors (ties included) become positive for it.
        best_per_box = iou.max(dim=1, keepdim=True).values  # (M, 1)
        box_idx, anchor_idx = ((iou == best_per_box) & (best_per_box > 0)).nonzero(as_tuple=True)
        matched[anchor_idx] = best_box[anchor_idx]
    return matched


def assign_points(points: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor, size_ranges: torch.Tensor, *,
                  center_radius: float = 1.5) -> torch.Tensor:
    """Index ``(N,)`` of each point's box (``-1`` background) by the FCOS rule (see the module docstring).

    ``size_ranges`` is ``(N, 2)``: the lower and upper bound of ``max(l, t, r, b)`` at each point's level.
    """
    N = len(points)
    if len(boxes) == 0:
        return torch.full((N,), -1, dtype=torch.long, device=points.device)
    x, y = points[:, 0, None], points[:, 1, None]  # (N, 1)
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=-1)  # (N, M, 4)
    inside = ltrb.min(dim=-1).values > 0
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2  # (M,)
    radius = center_radius * strides[:, None]  # (N, 1)
    near_centre = ((x - cx).abs() < radius) & ((y - cy).abs() < radius)
    reach = ltrb.max(dim=-1).values
    in_range = (reach >= size_ranges[:, :1]) & (reach <= size_ranges[:, 1:])
    candidate = inside & near_centre & in_range  # (N, M)
    area = box_area(boxes)[None].expand(N, -1).masked_fill(~candidate, float("inf"))
    smallest, index = area.min(dim=1)
    return torch.where(torch.isfinite(smallest), index, torch.full_like(index, -1))


def _level_ranges(strides: torch.Tensor, size_ranges: Sequence[tuple[float, float]] | None) -> torch.Tensor:
    """``(N, 2)`` size range of each point's level; ``None``: the rule of :class:`~dltricks.models.detection.FCOS`
    (``[0, 2 s_0], [2 s_0, 4 s_0], ...``, the last level open-ended)."""
    level_strides = sorted(set(strides.tolist()))
    if size_ranges is None:
        bounds = [0.0] + [2.0 * level_strides[0] * 2 ** i for i in range(len(level_strides) - 1)] + [float("inf")]
        size_ranges = list(zip(bounds[:-1], bounds[1:]))
    if len(size_ranges) != len(level_strides):
        raise ValueError(f"FCOSLoss: {len(size_ranges)} size ranges for {len(level_strides)} pyramid levels")
    out = torch.zeros(len(strides), 2, device=strides.device)
    for s, (lo, hi) in zip(level_strides, size_ranges):
        out[strides == s] = torch.tensor([lo, hi], device=strides.device)
    return out


class RetinaNetLoss:
    """Focal loss on every non-ignored anchor + smooth-L1 on positive anchors' deltas, both per positive.

    Returns the sum; :attr:`last` keeps the two terms of the last call (for logging).
    """

    def __init__(self, num_classes: int, *, alpha: float = 0.25, gamma: float = 2.0, beta: float = 1 / 9,
                 box_weight: float = 1.0) -> None:
        self.num_classes, self.alpha, self.gamma = num_classes, alpha, gamma
        self.beta, self.box_weight = beta, box_weight
        self.last: dict[str, float] = {}

    def __call__(self, output: dict[str, torch.Tensor], targets: torch.Tensor, **_: object) -> torch.Tensor:
        check_targets(targets, self.num_classes)
        logits, deltas, anchors = output["logits"].float(), output["deltas"].float(), output["anchors"][0].float()
        cls_targets = torch.zeros_like(logits)
        valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        box_losses, num_pos = [], 0
        for i, (boxes, labels) in enumerate(split_targets(targets)):
            matched = match_anchors(anchors, boxes)
            pos = matched >= 0
            valid[i] = matched != -2
            cls_targets[i, pos, labels[matched[pos]]] = 1.0
            num_pos += int(pos.sum())
            if pos.any():
                target_deltas = encode_boxes(boxes[matched[pos]], anchors[pos])
                box_losses.append(F.smooth_l1_loss(deltas[i, pos], target_deltas, beta=self.beta, reduction="sum"))
        norm = max(num_pos, 1)
        focal = sigmoid_focal_loss(logits[valid], cls_targets[valid], alpha=self.alpha, gamma=self.gamma)
        cls_loss = focal.sum() / norm
        box_loss = torch.stack(box_losses).sum() / norm if box_losses else deltas.sum() * 0.0
        self.last = {"cls": float(cls_loss.detach()), "box": float(box_loss.detach())}
        return cls_loss + self.box_weight * box_loss


class FCOSLoss:
    """Focal loss on every point + GIoU and centre-ness BCE on positive points (FCOS, see the module docstring)."""

    def __init__(self, num_classes: int, *, size_ranges: Sequence[tuple[float, float]] | None = None,
                 alpha: float = 0.25, gamma: float = 2.0, center_radius: float = 1.5) -> None:
        self.num_classes, self.alpha, self.gamma, self.center_radius = num_classes, alpha, gamma, center_radius
        self.size_ranges = None if size_ranges is None else [tuple(r) for r in size_ranges]
        self.last: dict[str, float] = {}

    def __call__(self, output: dict[str, torch.Tensor], targets: torch.Tensor, **_: object) -> torch.Tensor:
        check_targets(targets, self.num_classes)
        logits, ltrb = output["logits"].float(), output["ltrb"].float()
        centerness = output["centerness"].float()[..., 0]
        points, strides = output["points"][0].float(), output["strides"][0, :, 0].float()
        ranges = _level_ranges(strides, self.size_ranges)
        cls_targets = torch.zeros_like(logits)
        giou_terms, ctr_terms, num_pos = [], [], 0
        for i, (boxes, labels) in enumerate(split_targets(targets)):
            matched = assign_points(points, strides, boxes, ranges, center_radius=self.center_radius)
            pos = matched >= 0
            if not pos.any():
                continue
            num_pos += int(pos.sum())
            cls_targets[i, pos, labels[matched[pos]]] = 1.0
            gt = boxes[matched[pos]]  # (P, 4)
            p = points[pos]
            pred = torch.cat([p - ltrb[i, pos, :2], p + ltrb[i, pos, 2:]], dim=-1)
            giou_terms.append(1 - generalized_box_iou(pred, gt).diagonal())
            # Centre-ness target from the ground-truth distances.
            target_ltrb = torch.cat([p - gt[:, :2], gt[:, 2:] - p], dim=-1)
            lr, tb = target_ltrb[:, [0, 2]], target_ltrb[:, [1, 3]]
            ctr = ((lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)).sqrt()
            ctr_terms.append(F.binary_cross_entropy_with_logits(centerness[i, pos], ctr, reduction="none"))
        norm = max(num_pos, 1)
        cls_loss = sigmoid_focal_loss(logits, cls_targets, alpha=self.alpha, gamma=self.gamma).sum() / norm
        if giou_terms:
            box_loss = torch.cat(giou_terms).sum() / norm
            ctr_loss = torch.cat(ctr_terms).sum() / norm
        else:
            box_loss = ctr_loss = (ltrb.sum() + centerness.sum()) * 0.0
        self.last = {"cls": float(cls_loss.detach()), "box": float(box_loss.detach()), "ctr": float(ctr_loss.detach())}
        return cls_loss + box_loss + ctr_loss


class FasterRCNNLoss:
    """RPN and RoI-head losses of Faster R-CNN (see the module docstring); :attr:`last` keeps the four terms."""

    def __init__(self, num_classes: int, *, rpn_batch: int = 256, roi_batch: int = 128, roi_fg_fraction: float = 0.25,
                 beta: float = 1 / 9) -> None:
        self.num_classes, self.rpn_batch, self.roi_batch = num_classes, rpn_batch, roi_batch
        self.roi_fg_fraction, self.beta = roi_fg_fraction, beta
        self.last: dict[str, float] = {}

    def _rpn(self, output: dict[str, torch.Tensor], gt: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, deltas = output["rpn_logits"].float()[..., 0], output["rpn_deltas"].float()
        anchors = output["rpn_anchors"][0].float()
        cls_terms, box_terms, sampled = [], [], 0
        for i, (boxes, _) in enumerate(gt):
            matched = match_anchors(anchors, boxes, fg_iou=0.7, bg_iou=0.3)
            pos, neg = sample_balanced(matched >= 0, matched == -1, num=self.rpn_batch, positive_fraction=0.5)
            index = torch.cat([pos, neg])
            target = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).to(logits.device)
            cls_terms.append(F.binary_cross_entropy_with_logits(logits[i, index], target, reduction="sum"))
            if len(pos):
                target_deltas = encode_boxes(boxes[matched[pos]], anchors[pos])
                box_terms.append(F.smooth_l1_loss(deltas[i, pos], target_deltas, beta=self.beta, reduction="sum"))
            sampled += len(index)
        norm = max(sampled, 1)
        box = torch.stack(box_terms).sum() / norm if box_terms else deltas.sum() * 0.0
        return torch.stack(cls_terms).sum() / norm, box

    def _roi(self, output: dict[str, torch.Tensor], gt: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.cat([output["logits"], output["background_logits"]], dim=-1).float()  # (B, P, K + 1)
        deltas = output["roi_deltas"].float()  # (B, P, K, 4)
        proposals, valid = output["proposals"].float(), output["proposal_valid"].bool()
        K = self.num_classes
        cls_terms, box_terms, sampled = [], [], 0
        self.foreground: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, (boxes, labels) in enumerate(gt):
            classes = torch.full((len(proposals[i]),), K, dtype=torch.long, device=logits.device)  # background
            best_iou = torch.zeros(len(proposals[i]), device=logits.device)
            if len(boxes):
                best_iou, best = box_iou(boxes, proposals[i]).max(dim=0)
                classes = torch.where(best_iou >= 0.5, labels[best], classes)
            fg_mask = valid[i] & (best_iou >= 0.5)
            pos, neg = sample_balanced(fg_mask, valid[i] & ~fg_mask, num=self.roi_batch,
                                       positive_fraction=self.roi_fg_fraction)
            self.foreground.append((pos, best[pos] if len(pos) else pos))  # sampled foreground, its gt box
            index = torch.cat([pos, neg])
            cls_terms.append(F.cross_entropy(logits[i, index], classes[index], reduction="sum"))
            if len(pos):
                target_deltas = encode_boxes(boxes[best[pos]], proposals[i, pos], ROI_BOX_WEIGHTS)
                box_terms.append(F.smooth_l1_loss(deltas[i, pos, classes[pos]], target_deltas, beta=self.beta,
                                                  reduction="sum"))
            sampled += len(index)
        norm = max(sampled, 1)
        box = torch.stack(box_terms).sum() / norm if box_terms else deltas.sum() * 0.0
        cls = torch.stack(cls_terms).sum() / norm if sampled else logits.sum() * 0.0
        return cls, box

    def __call__(self, output: dict[str, torch.Tensor], targets: torch.Tensor, **_: object) -> torch.Tensor:
        check_targets(targets, self.num_classes)
        gt = split_targets(targets)
        rpn_cls, rpn_box = self._rpn(output, gt)
        roi_cls, roi_box = self._roi(output, gt)
        self.last = {k: float(v.detach()) for k, v in
                     {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "roi_cls": roi_cls, "roi_box": roi_box}.items()}
        return rpn_cls + rpn_box + roi_cls + roi_box


def _set_loss_terms(logits: torch.Tensor, boxes: torch.Tensor, gt: list[tuple[torch.Tensor, torch.Tensor]],
                    size: torch.Tensor, *, class_weights: torch.Tensor, costs: tuple[float, float, float]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DETR's three terms for one decoder layer: ``logits (B, Q, K + 1)``, ``boxes (B, Q, 4)`` normalised cxcywh,
    image ``size = (H, W)``. Returns the weighted-mean cross-entropy and the L1 and ``1 - GIoU`` sums (over
    matched pairs, not yet divided by the number of boxes)."""
    B, Q, K1 = logits.shape
    classes = torch.full((B, Q), K1 - 1, dtype=torch.long, device=logits.device)  # "no object" by default
    l1_terms, giou_terms = [boxes.sum() * 0.0], [boxes.sum() * 0.0]
    scale = torch.stack([size[1], size[0], size[1], size[0]]).to(boxes)
    probs = logits.detach().softmax(-1)
    pred_xyxy = box_convert(boxes, "cxcywh", "xyxy")  # (B, Q, 4) normalised
    for i, (gt_boxes, labels) in enumerate(gt):
        if not len(gt_boxes):
            continue
        gt_xyxy = gt_boxes.to(boxes) / scale
        cost = hungarian_cost(probs[i], pred_xyxy[i].detach(), gt_xyxy, labels, class_weight=costs[0],
                              l1_weight=costs[1], giou_weight=costs[2])  # (Q, M)
        rows, cols = hungarian_match(cost)
        rows, cols = rows.to(logits.device), cols.to(logits.device)
        classes[i, rows] = labels[cols]
        l1_terms.append((boxes[i, rows] - box_convert(gt_xyxy[cols], "xyxy", "cxcywh")).abs().sum())
        giou_terms.append((1 - generalized_box_iou(pred_xyxy[i, rows], gt_xyxy[cols]).diagonal()).sum())
    ce = F.cross_entropy(logits.reshape(B * Q, K1), classes.reshape(-1), weight=class_weights)
    return ce, torch.stack(l1_terms).sum(), torch.stack(giou_terms).sum()


class DETRLoss:
    """DETR's Hungarian loss (Carion et al. 2020, Eq. 1-2; see :mod:`dltricks.models.detection.detr`).

    Per decoder layer: the cross-entropy over all queries against the matched class or "no object" (class
    weight ``no_object_weight``), plus ``l1_weight`` L1 on normalised cxcywh and ``giou_weight`` (1 - GIoU) on
    matched pairs, each divided by the number of boxes in the batch; the matching cost uses the same weights
    (``class_weight`` on ``-p(class)``). With auxiliary outputs every layer adds its own matched loss.
    :attr:`last` keeps the last layer's three terms.
    """

    def __init__(self, num_classes: int, *, class_weight: float = 1.0, l1_weight: float = 5.0,
                 giou_weight: float = 2.0, no_object_weight: float = 0.1) -> None:
        self.num_classes = num_classes
        self.costs = (class_weight, l1_weight, giou_weight)
        self.no_object_weight = no_object_weight
        self.last: dict[str, float] = {}

    def __call__(self, output: dict[str, torch.Tensor], targets: torch.Tensor, **_: object) -> torch.Tensor:
        check_targets(targets, self.num_classes)
        gt = split_targets(targets)
        logits = torch.cat([output["logits"], output["no_object_logits"]], dim=-1).float()  # (B, Q, K + 1)
        layers = [(logits, output["boxes"].float())]
        if "aux_logits" in output:
            aux_logits, aux_boxes = output["aux_logits"].float(), output["aux_boxes"].float()  # (B, L - 1, Q, .)
            layers = [(aux_logits[:, k], aux_boxes[:, k]) for k in range(aux_logits.shape[1])] + layers
        weights = torch.ones(self.num_classes + 1, device=logits.device)
        weights[-1] = self.no_object_weight
        num_boxes = max(sum(len(b) for b, _ in gt), 1)
        size = output["image_size"][0].float()
        total = logits.sum() * 0.0
        class_weight, l1_weight, giou_weight = self.costs
        for layer_logits, layer_boxes in layers:
            ce, l1, giou = _set_loss_terms(layer_logits, layer_boxes, gt, size, class_weights=weights,
                                           costs=self.costs)
            l1, giou = l1 / num_boxes, giou / num_boxes
            total = total + class_weight * ce + l1_weight * l1 + giou_weight * giou
        self.last = {"ce": float(ce.detach()), "l1": float(l1.detach()), "giou": float(giou.detach())}
        return total


def assign_yolo(priors: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Index ``(N,)`` of each prior's box (``-1``: none) by the YOLO rule: a box goes to the cell holding its
    centre and there to the prior whose shape has the highest IoU with its shape (first on ties); of two boxes
    wanting one prior, the later keeps it. ``priors (N, 4)`` xyxy centred on their cells, ``strides (N,)``."""
    N = len(priors)
    assigned = torch.full((N,), -1, dtype=torch.long, device=priors.device)
    if len(boxes) == 0:
        return assigned
    s = strides[:, None]  # (N, 1)
    prior_centre = (priors[:, :2] + priors[:, 2:]) / 2  # (N, 2)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (M, 2)
    # (N, M): the box's centre falls in the prior's cell (both floored to cell indices).
    same_cell = ((torch.floor(centre[None, :, 0] / s) == torch.floor(prior_centre[:, None, 0] / s))
                 & (torch.floor(centre[None, :, 1] / s) == torch.floor(prior_centre[:, None, 1] / s)))
    prior_wh, box_wh = priors[:, 2:] - priors[:, :2], boxes[:, 2:] - boxes[:, :2]
    inter = torch.minimum(prior_wh[:, None], box_wh[None]).prod(-1)  # (N, M) overlap of the two centred shapes
    shape_iou = inter / (prior_wh.prod(-1)[:, None] + box_wh.prod(-1)[None] - inter)
    score = torch.where(same_cell, shape_iou, torch.full_like(shape_iou, -1.0))
    best_score, best_prior = score.max(dim=0)  # (M,): the first maximum
    found = best_score >= 0
    box_index = torch.arange(len(boxes), device=priors.device)
    return assigned.scatter_reduce(0, best_prior[found], box_index[found], reduce="amax")


class YOLOLoss:
    """The YOLO objective of :mod:`dltricks.models.detection.yolo`: squared error on the assigned anchors'
    offsets, objectness BCE (negatives weighted ``noobj_weight``, ignored above ``ignore_iou``), class
    cross-entropy; summed per image, mean over images. :attr:`last` keeps the three terms."""

    def __init__(self, num_classes: int, *, coord_weight: float = 5.0, noobj_weight: float = 0.5,
                 ignore_iou: float = 0.6) -> None:
        self.num_classes, self.coord_weight = num_classes, coord_weight
        self.noobj_weight, self.ignore_iou = noobj_weight, ignore_iou
        self.last: dict[str, float] = {}

    def __call__(self, output: dict[str, torch.Tensor], targets: torch.Tensor, **_: object) -> torch.Tensor:
        check_targets(targets, self.num_classes)
        logits, obj = output["logits"].float(), output["objectness"].float()[..., 0]
        offsets, priors, strides = output["offsets"].float(), output["priors"][0].float(), output["strides"][0].float()
        pred_boxes = decode_yolo(offsets.detach(), priors, strides)  # (B, N, 4)
        obj_target = torch.zeros_like(obj)
        obj_weight = torch.full_like(obj, self.noobj_weight)
        box_terms, cls_terms = [offsets.sum() * 0.0], [logits.sum() * 0.0]
        for i, (boxes, labels) in enumerate(split_targets(targets)):
            if not len(boxes):
                continue
            ignore = box_iou(pred_boxes[i], boxes).max(dim=1).values > self.ignore_iou  # (N,)
            obj_weight[i, ignore] = 0.0
            matched = assign_yolo(priors, strides[:, 0], boxes)
            pos = matched >= 0
            obj_target[i, pos], obj_weight[i, pos] = 1.0, 1.0
            gt, p, s = boxes[matched[pos]], priors[pos], strides[pos]
            corner = (p[:, :2] + p[:, 2:]) / 2 - s / 2
            target_xy = ((gt[:, :2] + gt[:, 2:]) / 2 - corner) / s  # offset of the centre in its cell, in [0, 1)
            target_wh = torch.log((gt[:, 2:] - gt[:, :2]) / (p[:, 2:] - p[:, :2]))
            t = offsets[i, pos]
            box_terms.append((t[:, :2].sigmoid() - target_xy).square().sum() + (t[:, 2:] - target_wh).square().sum())
            cls_terms.append(F.cross_entropy(logits[i, pos], labels[matched[pos]], reduction="sum"))
        B = max(len(targets), 1)
        box_loss = torch.stack(box_terms).sum() / B
        obj_loss = (F.binary_cross_entropy_with_logits(obj, obj_target, reduction="none") * obj_weight).sum() / B
        cls_loss = torch.stack(cls_terms).sum() / B
        self.last = {"box": float(box_loss.detach()), "obj": float(obj_loss.detach()), "cls": float(cls_loss.detach())}
        return self.coord_weight * box_loss + obj_loss + cls_loss


class SlidingWindowLoss:
    """The objective of :mod:`dltricks.models.detection.sliding_window` (see the module docstring);
    :attr:`last` keeps the two terms."""

    def __init__(self, num_classes: int, *, batch: int = 128, fg_fraction: float = 0.25, beta: float = 1 / 9) -> None:
        self.num_classes, self.batch, self.fg_fraction, self.beta = num_classes, batch, fg_fraction, beta
        self.last: dict[str, float] = {}

    def __call__(self, output: dict[str, torch.Tensor], targets: torch.Tensor, **_: object) -> torch.Tensor:
        check_targets(targets, self.num_classes)
        logits = torch.cat([output["logits"], output["background_logits"]], dim=-1).float()  # (B, N, K + 1)
        windows = output["windows"].float()  # (B, N, 4): the windows each image's logits refer to
        deltas = output.get("window_deltas")
        K = self.num_classes
        cls_terms, box_terms, sampled = [logits.sum() * 0.0], [], 0
        for i, (boxes, labels) in enumerate(split_targets(targets)):
            classes, best, _ = label_windows(windows[i], boxes, labels, K)
            pos, neg = sample_balanced((classes >= 0) & (classes < K), classes == K, num=self.batch,
                                       positive_fraction=self.fg_fraction)
            index = torch.cat([pos, neg])
            cls_terms.append(F.cross_entropy(logits[i, index], classes[index], reduction="sum"))
            if deltas is not None and len(pos):
                target = encode_boxes(boxes[best[pos]], windows[i, pos], ROI_BOX_WEIGHTS)
                box_terms.append(F.smooth_l1_loss(deltas[i, pos].float(), target, beta=self.beta, reduction="sum"))
            sampled += len(index)
        norm = max(sampled, 1)
        cls = torch.stack(cls_terms).sum() / norm
        box = (torch.stack(box_terms).sum() / norm if box_terms
               else (deltas.sum() * 0.0 if deltas is not None else cls * 0.0))
        self.last = {"cls": float(cls.detach()), "box": float(box.detach())}
        return cls + box


def mask_targets(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Mask R-CNN's targets: ``masks (n, H, W)`` (0/1) cut out at ``boxes (n, 4)`` by RoIAlign (2 x 2 samples
    per cell, ``aligned``) to ``size x size`` and thresholded at 0.5 -> ``(n, size, size)`` float 0/1."""
    if len(masks) == 0:
        return masks.new_zeros(0, size, size, dtype=torch.float32)
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=torch.float32)[:, None],
                      boxes.float()], dim=1)  # (n, 5): mask r is image r
    crops = roi_align(masks[:, None].float(), rois, size, sampling_ratio=2, aligned=True)  # (n, 1, size, size)
    return (crops[:, 0] >= 0.5).float()


class MaskRCNNLoss(FasterRCNNLoss):
    """Faster R-CNN's four terms plus the mask term of Mask R-CNN (He et al. 2017, Sec. 3; see
    :mod:`dltricks.models.detection.mask_rcnn`): the mean per-pixel BCE of the matched class's ``28 x 28`` map
    on the foreground proposals that the RoI sampler drew, against :func:`mask_targets` of their ground-truth
    instance. Targets are ``(targets (B, M, 5), instances (B, 1, H, W))`` (:mod:`dltricks.data.detection`)."""

    def __call__(self, output: dict[str, torch.Tensor], targets: Any, **_: object) -> torch.Tensor:
        boxes_targets, instances = split_batch(targets)
        if instances is None:
            raise ValueError("Mask R-CNN needs instance masks with its targets, (targets, instances); this data has "
                             "boxes only (use isbi2012-cells, or mnist-detection with masks=true)")
        total = super().__call__(output, boxes_targets)
        logits, mask_boxes = output["mask_logits"], output["mask_boxes"]  # (B, P, K, S, S), (B, P, 4)
        S = logits.shape[-1]
        terms, count = [logits.sum() * 0.0], 0
        for i, (pos, gt_index) in enumerate(self.foreground):
            if not len(pos):
                continue
            labels = boxes_targets[i][boxes_targets[i, :, 4] >= 0][gt_index, 4].long()
            gt_masks = instances[i, 0][None] == (gt_index + 1)[:, None, None]  # (n, H, W)
            target = mask_targets(gt_masks, mask_boxes[i, pos], S)  # (n, S, S)
            pred = logits[i, pos, labels].float()  # (n, S, S): the map of each RoI's ground-truth class
            terms.append(F.binary_cross_entropy_with_logits(pred, target, reduction="sum") / (S * S))
            count += len(pos)
        mask_loss = torch.stack(terms).sum() / max(count, 1)
        self.last["mask"] = float(mask_loss.detach())
        return total + mask_loss


class DetectionLoss:
    """The objective of a detection task: :class:`RetinaNetLoss` for an output with ``anchors``,
    :class:`FCOSLoss` for one with ``points``, :class:`FasterRCNNLoss` for one with ``proposals``,
    :class:`YOLOLoss` for one with ``objectness``, :class:`DETRLoss` for one with ``no_object_logits``,
    :class:`SlidingWindowLoss` for one with ``windows`` (one task serves every family)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.retinanet = RetinaNetLoss(num_classes)
        self.fcos = FCOSLoss(num_classes)
        self.faster_rcnn = FasterRCNNLoss(num_classes)
        self.mask_rcnn = MaskRCNNLoss(num_classes)
        self.yolo = YOLOLoss(num_classes)
        self.detr = DETRLoss(num_classes)
        self.sliding_window = SlidingWindowLoss(num_classes)

    def __call__(self, output: dict[str, torch.Tensor], targets: torch.Tensor, **_: object) -> torch.Tensor:
        if not isinstance(output, dict):
            raise ValueError(f"a detection loss takes a detector's output dict, got {type(output).__name__}; "
                             "is the model a detector (task='detection')?")
        if "mask_logits" in output:
            return self.mask_rcnn(output, targets)
        targets = split_batch(targets)[0]  # instance masks, where the data has them, serve Mask R-CNN only
        if "anchors" in output:
            return self.retinanet(output, targets)
        if "points" in output:
            return self.fcos(output, targets)
        if "proposals" in output:
            return self.faster_rcnn(output, targets)
        if "objectness" in output:
            return self.yolo(output, targets)
        if "no_object_logits" in output:
            return self.detr(output, targets)
        if "windows" in output:
            return self.sliding_window(output, targets)
        raise ValueError(f"detector output has keys {sorted(output)}; expected 'anchors' (RetinaNet), "
                         "'points' (FCOS), 'proposals' (Faster R-CNN), 'objectness' (YOLO), "
                         "'no_object_logits' (DETR) or 'windows' (sliding windows)")
