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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dltricks.layers.boxes import box_area, box_iou, encode_boxes, generalized_box_iou
from dltricks.models.detection.faster_rcnn import ROI_BOX_WEIGHTS

__all__ = ["sigmoid_focal_loss", "match_anchors", "assign_points", "RetinaNetLoss", "FCOSLoss", "FasterRCNNLoss",
           "DetectionLoss", "split_targets", "check_targets", "sample_balanced"]



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


def sample_balanced(positive: torch.Tensor, negative: torch.Tensor, *, num: int,
                    positive_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random indices of at most ``num * positive_fraction`` positives and enough negatives to make ``num``
    (the minibatch sampler of Faster R-CNN), from boolean masks ``(N,)``."""
    pos, neg = positive.nonzero().squeeze(1), negative.nonzero().squeeze(1)
    n_pos = min(len(pos), int(num * positive_fraction))
    n_neg = min(len(neg), num - n_pos)
    pos = pos[torch.randperm(len(pos), device=pos.device)[:n_pos]]
    neg = neg[torch.randperm(len(neg), device=neg.device)[:n_neg]]
    return pos, neg


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
        for i, (boxes, labels) in enumerate(gt):
            classes = torch.full((len(proposals[i]),), K, dtype=torch.long, device=logits.device)  # background
            best_iou = torch.zeros(len(proposals[i]), device=logits.device)
            if len(boxes):
                best_iou, best = box_iou(boxes, proposals[i]).max(dim=0)
                classes = torch.where(best_iou >= 0.5, labels[best], classes)
            fg_mask = valid[i] & (best_iou >= 0.5)
            pos, neg = sample_balanced(fg_mask, valid[i] & ~fg_mask, num=self.roi_batch,
                                       positive_fraction=self.roi_fg_fraction)
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


class DetectionLoss:
    """The objective of a detection task: :class:`RetinaNetLoss` for an output with ``anchors``,
    :class:`FCOSLoss` for one with ``points``, :class:`FasterRCNNLoss` for one with ``proposals`` (one task
    serves every family)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.retinanet = RetinaNetLoss(num_classes)
        self.fcos = FCOSLoss(num_classes)
        self.faster_rcnn = FasterRCNNLoss(num_classes)

    def __call__(self, output: dict[str, torch.Tensor], targets: torch.Tensor, **_: object) -> torch.Tensor:
        if not isinstance(output, dict):
            raise ValueError(f"a detection loss takes a detector's output dict, got {type(output).__name__}; "
                             "is the model a detector (task='detection')?")
        if "anchors" in output:
            return self.retinanet(output, targets)
        if "points" in output:
            return self.fcos(output, targets)
        if "proposals" in output:
            return self.faster_rcnn(output, targets)
        raise ValueError(f"detector output has keys {sorted(output)}; expected 'anchors' (RetinaNet), "
                         "'points' (FCOS) or 'proposals' (Faster R-CNN)")
