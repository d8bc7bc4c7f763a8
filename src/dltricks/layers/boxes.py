"""Axis-aligned boxes: formats, IoU and GIoU, box coding, non-maximum suppression, anchors and points.

Everything a detector needs between its dense head and a list of boxes, written with plain tensor ops
(torchvision's ``ops`` are not used in dltricks); ``tests/test_det_boxes.py`` checks each function against a
loop over Python floats on random inputs (hypothesis), empty inputs and degenerate boxes included.

**Formats.** ``xyxy`` = ``(x1, y1, x2, y2)`` corners, the internal format (continuous pixel coordinates: a
box covering pixel columns 3..5 is ``x1 = 3, x2 = 6``); ``xywh`` = ``(x1, y1, w, h)``, the COCO JSON format;
``cxcywh`` = centre and size, the DETR format. A box is *valid* when its coordinates are finite and
``x2 >= x1, y2 >= y1``; a box with zero width or height is valid but *degenerate* (its area is 0).

**IoU and GIoU** (Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019). For boxes A, B
with union U and smallest enclosing box C:

    IoU = |A ∩ B| / |U|,        GIoU = IoU - |C \\ U| / |C|        (GIoU in [-1, 1])

A union of area 0 (two degenerate boxes) gives IoU 0; an enclosing box of area 0 gives GIoU = IoU.

**Box coding** (Girshick et al. R-CNN 2014, Appendix C; Ren et al. Faster R-CNN 2015, Eq. 2). A box is
regressed relative to an anchor (centre ``x_a, y_a``, size ``w_a, h_a``) as

    t_x = w_x (x - x_a) / w_a,   t_y = w_y (y - y_a) / h_a,   t_w = w_w log(w / w_a),   t_h = w_h log(h / h_a)

with weights ``(w_x, w_y, w_w, w_h)`` (``(1, 1, 1, 1)`` in RetinaNet, ``(10, 10, 5, 5)`` in Faster R-CNN's
second stage). Decoding clamps ``t_w, t_h`` at ``log(1000 / 16)`` so an untrained head cannot overflow ``exp``.

**NMS.** Greedy non-maximum suppression: take the highest-scoring box, drop every remaining box whose IoU
with it exceeds the threshold, repeat. Ties in score keep the input order (stable sort). ``batched_nms``
runs it per class at once by shifting each class's boxes to its own region of the plane (no box of one
class can then overlap a box of another).

**Anchors and points.** A feature map of stride ``s`` and size ``h x w`` has cells centred at
``((j + 0.5) s, (i + 0.5) s)``; RetinaNet puts ``len(sizes) * len(ratios)`` anchors on each (width
``size / sqrt(r)``, height ``size * sqrt(r)``, so ``r`` = height / width and the area is ``size^2``), FCOS
one point. Anchors are ordered level, then row, column, then anchor (sizes outer, ratios inner): the
order of a head's ``(B, A * K, H, W) -> (B, H * W * A, K)`` reshape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["box_convert", "box_area", "box_iou", "generalized_box_iou", "check_boxes", "encode_boxes",
           "decode_boxes", "nms", "nms_mask", "batched_nms", "clip_boxes", "anchor_grid", "point_grid", "BBOX_CLAMP"]

BBOX_CLAMP = math.log(1000.0 / 16)
FORMATS = ("xyxy", "xywh", "cxcywh")


def box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    """Convert ``(..., 4)`` boxes between ``xyxy``, ``xywh`` and ``cxcywh``."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    # (a, b, c, d) is xyxy now.
    if out_fmt == "xywh":
        return torch.stack([a, b, c - a, d - b], dim=-1)
    if out_fmt == "cxcywh":
        return torch.stack([(a + c) / 2, (b + d) / 2, c - a, d - b], dim=-1)
    return torch.stack([a, b, c, d], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of ``(..., 4)`` xyxy boxes (0 for degenerate ones)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise intersection and union areas of ``(..., N, 4)`` and ``(..., M, 4)`` xyxy boxes, both
    ``(..., N, M)``."""
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])  # (..., N, M, 2)
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])  # (..., N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return inter, union


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``(N, M)`` of xyxy boxes ``(N, 4)`` and ``(M, 4)`` (or ``(..., N, M)`` for batches)."""
    inter, union = _inter_union(a, b)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU ``(N, M)`` of xyxy boxes (Rezatofighi et al. 2019; see the module docstring)."""
    inter, union = _inter_union(a, b)
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))
    top_left = torch.minimum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]  # (N, M)
    penalty = (enclosing - union) / enclosing.clamp(min=torch.finfo(enclosing.dtype).tiny)
    return iou - torch.where(enclosing > 0, penalty, torch.zeros_like(penalty))


def check_boxes(boxes: torch.Tensor, *, what: str = "boxes") -> None:
    """Raise ``ValueError`` naming the first bad box unless ``boxes`` is ``(..., 4)`` valid xyxy boxes."""
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{what} must have shape (..., 4) (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    flat = boxes.reshape(-1, 4)
    bad = ~torch.isfinite(flat).all(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"{what}: box {i} has a non-finite coordinate: {flat[i].tolist()}")
    bad = (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"{what}: box {i} has x2 < x1 or y2 < y1: {flat[i].tolist()} (expected x1, y1, x2, y2)")


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Regression targets ``(..., 4)`` of xyxy ``boxes`` relative to xyxy ``anchors`` (same shape)."""
    wx, wy, ww, wh = weights
    anchor_cxcywh = box_convert(anchors, "xyxy", "cxcywh")
    box_cxcywh = box_convert(boxes, "xyxy", "cxcywh")
    eps = torch.finfo(boxes.dtype).eps
    a_w, a_h = anchor_cxcywh[..., 2].clamp(min=eps), anchor_cxcywh[..., 3].clamp(min=eps)
    tx = wx * (box_cxcywh[..., 0] - anchor_cxcywh[..., 0]) / a_w
    ty = wy * (box_cxcywh[..., 1] - anchor_cxcywh[..., 1]) / a_h
    tw = ww * torch.log(box_cxcywh[..., 2].clamp(min=eps) / a_w)
    th = wh * torch.log(box_cxcywh[..., 3].clamp(min=eps) / a_h)
    return torch.stack([tx, ty, tw, th], dim=-1)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: xyxy boxes from ``(..., 4)`` deltas and anchors."""
    wx, wy, ww, wh = weights
    anchor_cxcywh = box_convert(anchors, "xyxy", "cxcywh")
    cx = deltas[..., 0] / wx * anchor_cxcywh[..., 2] + anchor_cxcywh[..., 0]
    cy = deltas[..., 1] / wy * anchor_cxcywh[..., 3] + anchor_cxcywh[..., 1]
    w = torch.exp((deltas[..., 2] / ww).clamp(max=BBOX_CLAMP)) * anchor_cxcywh[..., 2]
    h = torch.exp((deltas[..., 3] / wh).clamp(max=BBOX_CLAMP)) * anchor_cxcywh[..., 3]
    return box_convert(torch.stack([cx, cy, w, h], dim=-1), "cxcywh", "xyxy")


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (int64, by decreasing score) of the boxes greedy NMS keeps: a box is dropped when its IoU with
    a kept, higher-scoring box is above ``iou_threshold``."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])  # (N, N), rows and columns by decreasing score
    # One pass over the boxes in score order on the CPU: the suppression of box i depends on every kept box
    # before it, so the loop is inherently sequential (N is at most the head's pre-NMS top-k).
    over = (iou > iou_threshold).cpu()
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def nms_mask(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on ``(..., N, 4)`` boxes already sorted by decreasing score, as a fixed-shape ``(..., N)``
    keep mask.

    The same decisions as :func:`nms`, written without data-dependent control flow (a loop over the static
    ``N``), so a model can run it inside ``forward`` on a batch, on any device (the meta device included) and
    under ``torch.export``: box ``i`` is kept unless a kept box before it overlaps it by IoU above
    ``iou_threshold``.
    """
    over = box_iou(boxes, boxes) > iou_threshold  # (..., N, N)
    keep = torch.ones(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
    for i in range(1, boxes.shape[-2]):
        keep[..., i] = ~(over[..., :i, i] & keep[..., :i]).any(dim=-1)
    return keep


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(..., 4)`` xyxy boxes clipped to an image of ``size = (H, W)``."""
    H, W = size
    x = boxes[..., 0::2].clamp(0, W)
    y = boxes[..., 1::2].clamp(0, H)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Class-wise NMS: boxes of different ``labels`` never suppress each other. Indices by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    # Shift class c by c * (span + 1): boxes of different classes then cannot intersect.
    span = (boxes.max() - boxes.min()).clamp(min=0) + 1
    shifted = boxes - boxes.min() + (labels.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def _cell_centres(size: tuple[int, int], stride: int, *, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Centres ``(h * w, 2)`` (x, y) of the cells of an ``h x w`` map of stride ``stride``, row-major."""
    h, w = size
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def anchor_grid(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], sizes: Sequence[Sequence[float]],
                ratios: Sequence[float] = (0.5, 1.0, 2.0), *, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All anchors ``(sum_l h_l * w_l * A, 4)`` xyxy over pyramid levels (order: see the module docstring).

    Args:
        feature_sizes: ``(h_l, w_l)`` of each level; strides: its stride.
        sizes: anchor sizes (square root of the area) of each level, e.g. RetinaNet's
            ``[4 s * 2**(k / 3) for k in range(3)]`` for level stride ``s``.
        ratios: height / width of the anchors (the same on every level).
    """
    if not (len(feature_sizes) == len(strides) == len(sizes)):
        raise ValueError(f"anchor_grid: {len(feature_sizes)} feature sizes, {len(strides)} strides and "
                         f"{len(sizes)} size lists; expected one of each per level")
    levels = []
    for size, stride, level_sizes in zip(feature_sizes, strides, sizes):
        # Anchor shapes (A, 2): widths and heights, sizes outer, ratios inner.
        wh = torch.tensor([[s / math.sqrt(r), s * math.sqrt(r)] for s in level_sizes for r in ratios],
                          device=device, dtype=dtype)
        centres = _cell_centres(size, stride, device=device, dtype=dtype)  # (h * w, 2)
        # (h * w, A, 4): every cell centre with every shape.
        boxes = torch.cat([centres[:, None, :] - wh[None] / 2, centres[:, None, :] + wh[None] / 2], dim=-1)
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels) if levels else torch.zeros(0, 4, device=device, dtype=dtype)


def point_grid(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], *,
               device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """FCOS locations: points ``(N, 2)`` (x, y) over all levels and the stride ``(N,)`` of each."""
    points, point_strides = [], []
    for size, stride in zip(feature_sizes, strides):
        centres = _cell_centres(size, stride, device=device, dtype=dtype)
        points.append(centres)
        point_strides.append(torch.full((len(centres),), float(stride), device=device, dtype=dtype))
    if not points:
        return torch.zeros(0, 2, device=device, dtype=dtype), torch.zeros(0, device=device, dtype=dtype)
    return torch.cat(points), torch.cat(point_strides)
