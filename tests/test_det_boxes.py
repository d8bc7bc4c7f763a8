"""Box toolkit (dltricks.layers.boxes) and matchers against loops over Python floats."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dltricks.layers.boxes import (anchor_grid, batched_nms, box_convert, box_iou, check_boxes, decode_boxes,
                                   encode_boxes, generalized_box_iou, nms, nms_mask, point_grid)
from dltricks.tasks.detection.matching import hungarian_cost, hungarian_match

coord = st.floats(0, 50, allow_nan=False, width=32)


@st.composite
def boxes(draw, min_size: int = 0, max_size: int = 6) -> torch.Tensor:
    """xyxy boxes, degenerate ones (zero width or height) included."""
    n = draw(st.integers(min_size, max_size))
    rows = []
    for _ in range(n):
        x1, y1 = draw(coord), draw(coord)
        w, h = draw(st.sampled_from([0.0, 1.0]) | coord), draw(st.sampled_from([0.0, 2.0]) | coord)
        rows.append([x1, y1, x1 + w, y1 + h])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def iou_ref(a: list[float], b: list[float]) -> tuple[float, float]:
    """IoU and GIoU of two boxes, one pair at a time."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / union if union > 0 else 0.0
    c = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return iou, (iou - (c - union) / c if c > 0 else iou)


@settings(max_examples=60, deadline=None)
@given(boxes(), boxes())
def test_iou_and_giou_match_pairwise_loop(a: torch.Tensor, b: torch.Tensor) -> None:
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (len(a), len(b))
    for i, j in itertools.product(range(len(a)), range(len(b))):
        ref_iou, ref_giou = iou_ref(a[i].tolist(), b[j].tolist())
        assert math.isclose(iou[i, j].item(), ref_iou, abs_tol=1e-9)
        assert math.isclose(giou[i, j].item(), ref_giou, abs_tol=1e-9)
    assert ((iou >= 0) & (iou <= 1)).all() and ((giou >= -1) & (giou <= iou + 1e-12)).all()


def test_iou_of_identical_and_degenerate_boxes() -> None:
    box = torch.tensor([[1.0, 2.0, 5.0, 7.0]])
    assert box_iou(box, box).item() == 1.0 and generalized_box_iou(box, box).item() == 1.0
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert box_iou(point, point).item() == 0.0  # union of area 0: defined as 0, not NaN
    assert box_iou(torch.zeros(0, 4), box).shape == (0, 1)


@settings(max_examples=40, deadline=None)
@given(boxes(min_size=1))
def test_format_round_trips(b: torch.Tensor) -> None:
    for fmt in ("xywh", "cxcywh"):
        torch.testing.assert_close(box_convert(box_convert(b, "xyxy", fmt), fmt, "xyxy"), b)


@settings(max_examples=40, deadline=None)
@given(boxes(min_size=1), st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]))
def test_encode_decode_round_trip(b: torch.Tensor, weights: tuple[float, ...]) -> None:
    b = b + torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=b.dtype)  # positive sizes (log of the ratio)
    anchors = torch.tensor([[10.0, 10.0, 26.0, 20.0]], dtype=b.dtype).expand(len(b), -1)
    deltas = encode_boxes(b, anchors, weights)
    torch.testing.assert_close(decode_boxes(deltas, anchors, weights), b, rtol=1e-9, atol=1e-9)
    # The formula of Girshick et al., one box at a time.
    x1, y1, x2, y2 = b[0].tolist()
    tx = weights[0] * ((x1 + x2) / 2 - 18.0) / 16.0
    tw = weights[2] * math.log((x2 - x1) / 16.0)
    assert math.isclose(deltas[0, 0].item(), tx, abs_tol=1e-9) and math.isclose(deltas[0, 2].item(), tw, abs_tol=1e-9)


def nms_ref(b: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    order = sorted(range(len(b)), key=lambda i: -scores[i])  # Python's sort is stable
    keep: list[int] = []
    for i in order:
        if all(iou_ref(b[i], b[k])[0] <= threshold for k in keep):
            keep.append(i)
    return keep


@settings(max_examples=60, deadline=None)
@given(boxes(max_size=12), st.data(), st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_nms_matches_loop(b: torch.Tensor, data: st.DataObject, threshold: float) -> None:
    scores = data.draw(st.lists(st.sampled_from([0.1, 0.5, 0.9]) | st.floats(0, 1, width=32),
                                min_size=len(b), max_size=len(b)))
    keep = nms(b, torch.tensor(scores, dtype=torch.float64), threshold)
    assert keep.tolist() == nms_ref(b.tolist(), scores, threshold)
    labels = data.draw(st.lists(st.integers(0, 2), min_size=len(b), max_size=len(b)))
    kept = batched_nms(b, torch.tensor(scores, dtype=torch.float64), torch.tensor(labels), threshold).tolist()
    # Class-wise: NMS inside each class, then all survivors by score.
    ref = [i for c in set(labels) for i in [[j for j in range(len(b)) if labels[j] == c][k] for k in nms_ref(
        [b[j].tolist() for j in range(len(b)) if labels[j] == c],
        [scores[j] for j in range(len(b)) if labels[j] == c], threshold)]]
    assert sorted(kept) == sorted(ref)
    assert [scores[i] for i in kept] == sorted((scores[i] for i in kept), reverse=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(boxes(max_size=8), min_size=1, max_size=3), st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_fixed_shape_nms_mask_matches_loop(batch: list[torch.Tensor], threshold: float) -> None:
    """nms_mask on score-sorted boxes keeps what the loop keeps, image by image of a padded batch."""
    n = max(len(b) for b in batch)
    padded = torch.zeros(len(batch), n, 4, dtype=torch.float64)  # zero boxes: area 0, IoU 0 with every box
    for i, b in enumerate(batch):
        padded[i, :len(b)] = b
    keep = nms_mask(padded, threshold)
    assert keep.shape == (len(batch), n)
    for i, b in enumerate(batch):
        scores = [float(len(b) - j) for j in range(len(b))]  # already sorted, best first
        assert keep[i, :len(b)].nonzero().squeeze(1).tolist() == nms_ref(b.tolist(), scores, threshold)
    assert nms_mask(torch.zeros(0, 4), 0.5).shape == (0,)


def test_nms_chain_a_suppressed_box_suppresses_nothing() -> None:
    """A overlaps B (IoU 1/3), B overlaps C (1/3), A and C are apart: A drops B, so C stays."""
    chain = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    assert nms_mask(chain, 0.3).tolist() == [True, False, True]
    assert nms(chain, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


def test_nms_empty() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)


def test_anchor_grid_matches_loop() -> None:
    sizes, strides, scales = [(3, 2), (2, 1)], [8, 16], [[16.0, 20.0], [32.0, 40.0]]
    ratios = (0.5, 1.0, 2.0)
    ref = []
    for (h, w), s, level in zip(sizes, strides, scales):
        for i in range(h):
            for j in range(w):
                cx, cy = (j + 0.5) * s, (i + 0.5) * s
                for size in level:
                    for r in ratios:
                        aw, ah = size / math.sqrt(r), size * math.sqrt(r)
                        ref.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    anchors = anchor_grid(sizes, strides, scales, ratios, dtype=torch.float64)
    torch.testing.assert_close(anchors, torch.tensor(ref, dtype=torch.float64))
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    torch.testing.assert_close(areas[:6], torch.tensor([256.0] * 3 + [400.0] * 3, dtype=torch.float64))
    points, point_strides = point_grid(sizes, strides)
    assert points.shape == (8, 2) and point_strides.tolist() == [8.0] * 6 + [16.0] * 2
    assert points[1].tolist() == [12.0, 4.0]


@pytest.mark.parametrize("bad, message", [([[5.0, 0.0, 1.0, 4.0]], "x2 < x1"),
                                          ([[0.0, float("nan"), 1.0, 4.0]], "non-finite"),
                                          ([[0.0, 1.0, 2.0]], "shape")])
def test_check_boxes_names_the_problem(bad: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_boxes(torch.tensor(bad))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 5), st.integers(0, 10_000))
def test_hungarian_matching_is_the_best_permutation(Q: int, M: int, seed: int) -> None:
    M = min(M, Q)
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(Q, 3, generator=g, dtype=torch.float64).softmax(-1)
    xy = torch.rand(Q + M, 2, generator=g, dtype=torch.float64) * 20
    b = torch.cat([xy, xy + 1 + torch.rand(Q + M, 2, generator=g, dtype=torch.float64) * 10], dim=1)
    cost = hungarian_cost(probs, b[:Q], b[Q:], torch.randint(0, 3, (M,), generator=g))
    rows, cols = hungarian_match(cost)
    assert len(rows) == M and sorted(cols.tolist()) == list(range(M))
    best = min((sum(cost[q, m].item() for m, q in enumerate(perm)) for perm in itertools.permutations(range(Q), M)),
               default=0.0)
    assert math.isclose(cost[rows, cols].sum().item(), best, abs_tol=1e-9)
