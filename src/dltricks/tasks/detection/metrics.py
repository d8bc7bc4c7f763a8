"""Detection metrics: COCO mAP@[.5:.95] (with AP50, AP75 and AP by object size) and PASCAL VOC AP@0.5.

**COCO** (Lin et al., "Microsoft COCO", ECCV 2014). ``coco_evaluate`` calls the maintained reference,
``pycocotools``' ``COCOeval``, by default; ``backend="numpy"`` runs this module's implementation of the same
rules, which ``tests/test_det_metrics.py`` matches to ``COCOeval`` to 1e-9 on random predictions and both match
a case worked out by hand. Per image and class,
the 100 highest-scoring detections are matched greedily in score order, each to the unmatched ground-truth
box of highest IoU at or above the threshold ``t``. Per class, the detections of all images are sorted by
score and give a precision/recall curve; precision is made non-increasing (the best precision at any higher
recall) and read at the 101 recall points ``0, 0.01, ..., 1`` (0 beyond the largest recall reached):

    AP_k(t) = mean_r  max_{r' >= r} precision_k(r'),     mAP = mean over t in {0.5, 0.55, ..., 0.95} and k

Classes without ground truth are left out. AP small / medium / large repeat this with the ground truth
outside the area range (below 32^2, 32^2-96^2, above 96^2 pixels) ignored: a detection matched to an ignored
box, or unmatched and itself outside the range, counts neither way. AP50 and AP75 are ``t = 0.5`` and
``0.75`` alone.

**VOC** (Everingham et al., "The PASCAL VOC Challenge", IJCV 2010; the 2010+ devkit rule). Per class, all
detections in score order; each takes the ground-truth box of its image with the highest IoU; it is a true
positive when that IoU exceeds 0.5 and the box is not taken yet, otherwise a false positive (unlike COCO it
does not fall back to the next-best box). AP is the area under the non-increasing precision envelope over
every recall reached (no 101-point sampling).

Inputs are per image: predictions ``(boxes (n, 4) xyxy, scores (n,), labels (n,))`` and ground truth
``(boxes (m, 4), labels (m,))``, as tensors or arrays.

**Mask AP** (``coco_evaluate(..., iou_type="segm")``, COCO's ``segm`` protocol): the same matching and averaging
with the IoU of binary masks, ``|A and B| / |A or B|``, in place of box IoU, and the mask's pixel count as the
area that decides small / medium / large. Predictions then carry a fourth entry, ``masks (n, H, W)`` bool, and
ground truth a third, ``masks (m, H, W)``. ``tests/test_det_metrics.py`` checks it against ``pycocotools`` on
random masks encoded as RLE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["coco_evaluate", "voc_ap50", "IOU_THRESHOLDS", "RECALL_POINTS", "AREA_RANGES", "to_coco_dicts"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e10)}

Prediction = tuple[Any, ...]  # boxes, scores, labels (, masks)
GroundTruth = tuple[Any, ...]  # boxes, labels (, masks)
IouType = Literal["bbox", "segm"]


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of xyxy boxes in float64."""
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of flattened boolean masks ``(n, H W)``."""
    inter = a.astype(np.float64) @ b.T.astype(np.float64)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _overlap(dt: np.ndarray, gt: np.ndarray, iou_type: IouType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU ``(D, G)`` and the areas of the detections and ground truth: boxes, or flattened masks."""
    if iou_type == "segm":
        return _mask_iou(dt, gt), dt.sum(1).astype(np.float64), gt.sum(1).astype(np.float64)
    return _iou(dt, gt), _area(dt), _area(gt)


def _match_image(dt: np.ndarray, scores: np.ndarray, gt: np.ndarray, area_range: tuple[float, float],
                 max_detections: int, iou_type: IouType = "bbox"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """COCO matching of one image and class: scores, matched ``(T, D)``, ignored ``(T, D)``, gt ignored ``(G,)``."""
    lo, hi = area_range
    d_order = np.argsort(-scores, kind="mergesort")[:max_detections]
    dt, scores = dt[d_order], scores[d_order]
    ious, dt_area, gt_area = _overlap(dt, gt, iou_type)
    gt_ignore = (gt_area < lo) | (gt_area > hi)
    g_order = np.argsort(gt_ignore, kind="mergesort")  # boxes in range first
    gt_ignore, ious = gt_ignore[g_order], ious[:, g_order]
    T, D, G = len(IOU_THRESHOLDS), len(dt), len(gt)
    gt_taken = np.zeros((T, G), dtype=bool)
    matched = np.zeros((T, D), dtype=bool)
    ignored = np.zeros((T, D), dtype=bool)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        for d in range(D):
            best, m = min(threshold, 1 - 1e-10), -1
            for g in range(G):
                if gt_taken[t, g]:
                    continue
                if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                    break  # the boxes in range are done and one matched: ignored boxes cannot replace it
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m >= 0:
                matched[t, d], ignored[t, d], gt_taken[t, m] = True, gt_ignore[m], True
    outside = (dt_area < lo) | (dt_area > hi)
    ignored |= ~matched & outside[None, :]
    return scores, matched, ignored, gt_ignore


def _precision_at_recalls(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> np.ndarray:
    """Interpolated precision at :data:`RECALL_POINTS` from cumulative TP/FP counts in score order."""
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.zeros(len(RECALL_POINTS))
    valid = index < len(envelope)
    q[valid] = envelope[index[valid]]
    return q


def _check_image(boxes: np.ndarray, what: str, image: int) -> None:
    """``ValueError`` naming the first box of ``image`` that is non-finite or has ``x2 < x1`` or ``y2 < y1``."""
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        j = int(np.nonzero(bad)[0][0])
        raise ValueError(f"{what} of image {image}: box {j} is {boxes[j].tolist()}; boxes must be finite "
                         "(x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")


def _flat_masks(masks: Any, n: int, what: str, image: int) -> np.ndarray:
    """Boolean masks ``(n, H W)``; ``ValueError`` when there is not one mask per box."""
    masks = _np(masks, bool)
    if masks.ndim != 3 or len(masks) != n:
        raise ValueError(f"{what} of image {image}: segm AP needs one (H, W) mask per box, got masks of shape "
                         f"{masks.shape} for {n} boxes")
    return masks.reshape(n, masks.shape[1] * masks.shape[2])


def _by_class(predictions: Sequence[Prediction], ground_truth: Sequence[GroundTruth], iou_type: IouType = "bbox"
              ) -> tuple[list[int], list[dict[int, tuple[np.ndarray, np.ndarray]]], list[dict[int, np.ndarray]]]:
    """Per image and class: detections ``(regions, scores)`` and ground-truth regions (boxes, or flattened
    masks for ``segm``)."""
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} images of predictions but {len(ground_truth)} of ground truth")
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    dets, gts, classes = [], [], set()
    for prediction, truth in zip(predictions, ground_truth):
        boxes, scores, labels = prediction[:3]
        g_boxes, g_labels = truth[:2]
        boxes, scores, labels = _np(boxes).reshape(-1, 4), _np(scores).reshape(-1), _np(labels, np.int64).reshape(-1)
        g_boxes, g_labels = _np(g_boxes).reshape(-1, 4), _np(g_labels, np.int64).reshape(-1)
        _check_image(boxes, "predictions", len(dets))
        _check_image(g_boxes, "ground truth", len(dets))
        if not np.isfinite(scores).all():
            raise ValueError(f"predictions of image {len(dets)}: scores must be finite, got {scores.tolist()}")
        if iou_type == "segm":
            if len(prediction) < 4 or len(truth) < 3:
                raise ValueError(f"image {len(dets)}: segm AP needs predictions (boxes, scores, labels, masks) and "
                                 "ground truth (boxes, labels, masks)")
            boxes = _flat_masks(prediction[3], len(boxes), "predictions", len(dets))
            g_boxes = _flat_masks(truth[2], len(g_boxes), "ground truth", len(dets))
        dets.append({int(k): (boxes[labels == k], scores[labels == k]) for k in np.unique(labels)})
        gts.append({int(k): g_boxes[g_labels == k] for k in np.unique(g_labels)})
        classes.update(int(k) for k in np.unique(g_labels))
    return sorted(classes), dets, gts


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def _pycocotools_evaluate(predictions: Sequence[Prediction], ground_truth: Sequence[GroundTruth], *,
                          max_detections: int, iou_type: IouType) -> dict[str, float] | None:
    """The six COCO numbers from ``pycocotools``' ``COCOeval`` (None when there is no detection at all, which
    ``loadRes`` refuses)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = to_coco_dicts([g[:2] for g in ground_truth], [p[:3] for p in predictions])
    if not results:
        return None
    if iou_type == "segm":  # masks as RLE, the mask's pixel count as the area
        masks = [_flat_masks(g[2], len(_np(g[1]).reshape(-1)), "ground-truth", i) for i, g in enumerate(ground_truth)]
        shapes = [np.asarray(g[2]).shape[-2:] for g in ground_truth]
        annotations = iter(dataset["annotations"])
        for image, (m, shape) in enumerate(zip(masks, shapes)):
            dataset["images"][image].update(height=int(shape[0]), width=int(shape[1]))
            for row in m:
                a = next(annotations)
                a["segmentation"], a["area"] = _rle(row.reshape(shape)), float(row.sum())
        flat = iter(results)
        for i, p in enumerate(predictions):
            shape = np.asarray(p[3]).shape[-2:]
            for row in _flat_masks(p[3], len(_np(p[1]).reshape(-1)), "predicted", i):
                next(flat)["segmentation"] = _rle(row.reshape(shape))
        for r in results:
            r.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        evaluator.params.imgIds = [im["id"] for im in dataset["images"]]
        evaluator.params.maxDets = sorted({1, 10, max_detections})  # COCOeval sorts them itself
        evaluator.evaluate()
        evaluator.accumulate()
    # COCOeval.summarize reads its AP rows at maxDets=100 whatever params.maxDets holds (every number is -1 for
    # another limit), so the six numbers are read from its precision array (T, R, K, areas, maxDets) at our limit;
    # its IoU thresholds are IOU_THRESHOLDS.
    limit = evaluator.params.maxDets.index(max_detections)
    areas = evaluator.params.areaRngLbl  # ["all", "small", "medium", "large"]
    precision = {name: evaluator.eval["precision"][..., areas.index(name), limit] for name in AREA_RANGES}
    return {**_summary(precision), "images": float(len(ground_truth))}


def _summary(precision: dict[str, np.ndarray]) -> dict[str, float]:
    """The six COCO numbers from the interpolated precision ``(T, R, K)`` of each area range at
    :data:`IOU_THRESHOLDS`: the mean over the entries > -1 (-1 when there are none), as ``COCOeval.summarize``."""

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    t50, t75 = (int(np.argmin(np.abs(IOU_THRESHOLDS - t))) for t in (0.5, 0.75))
    return {"map": mean(precision["all"]), "ap50": mean(precision["all"][t50]), "ap75": mean(precision["all"][t75]),
            "ap_small": mean(precision["small"]), "ap_medium": mean(precision["medium"]),
            "ap_large": mean(precision["large"])}


def coco_evaluate(predictions: Sequence[Prediction], ground_truth: Sequence[GroundTruth], *,
                  max_detections: int = 100, iou_type: IouType = "bbox",
                  backend: Literal["pycocotools", "numpy"] = "pycocotools") -> dict[str, float]:
    """COCO box AP (or mask AP with ``iou_type="segm"``, module docstring): ``map`` (AP@[.5:.95]), ``ap50``,
    ``ap75``, ``ap_small``, ``ap_medium``, ``ap_large`` (``-1`` where no class has ground truth in that range,
    as ``pycocotools`` prints), and ``images``.

    ``backend="pycocotools"`` (the default) computes them with the maintained reference, ``COCOeval``;
    ``"numpy"`` with this module's implementation of the same rules (no pycocotools needed; equal to 1e-9 in
    ``tests/test_det_metrics.py``; 1.3 s against 2.1 s of CPU for 500 images of 100 detections each)."""
    if backend not in ("pycocotools", "numpy"):
        raise ValueError(f"backend must be 'pycocotools' or 'numpy', got {backend!r}")
    classes, dets, gts = _by_class(predictions, ground_truth, iou_type)  # also checks every box and mask
    if backend == "pycocotools":
        result = _pycocotools_evaluate(predictions, ground_truth, max_detections=max_detections, iou_type=iou_type)
        if result is not None:
            return result
    width = next((r.shape[1] for g in gts for r in g.values()), 4)  # 4 (boxes) or H W (masks)
    empty4, empty = np.zeros((0, width), dtype=bool if iou_type == "segm" else np.float64), np.zeros(0)
    # precision[area][t, r, k]; -1 where class k has no ground truth in range.
    precision = {a: -np.ones((len(IOU_THRESHOLDS), len(RECALL_POINTS), len(classes))) for a in AREA_RANGES}
    for k_index, k in enumerate(classes):
        for area_name, area_range in AREA_RANGES.items():
            per_image = []
            for det, gt in zip(dets, gts):
                d_boxes, d_scores = det.get(k, (empty4, empty))
                g_boxes = gt.get(k, empty4)
                if len(d_boxes) or len(g_boxes):
                    per_image.append(_match_image(d_boxes, d_scores, g_boxes, area_range, max_detections, iou_type))
            num_gt = int(sum((~e[3]).sum() for e in per_image))
            if num_gt == 0:
                continue
            scores = np.concatenate([e[0] for e in per_image])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([e[1] for e in per_image], axis=1)[:, order]
            ignored = np.concatenate([e[2] for e in per_image], axis=1)[:, order]
            tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
            fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
            for t in range(len(IOU_THRESHOLDS)):
                precision[area_name][t, :, k_index] = _precision_at_recalls(tp[t], fp[t], num_gt)
    return {**_summary(precision), "images": float(len(gts))}


def voc_ap50(predictions: Sequence[Prediction], ground_truth: Sequence[GroundTruth], *,
             iou_threshold: float = 0.5) -> float:
    """PASCAL VOC AP at IoU > ``iou_threshold``, mean over classes with ground truth (module docstring)."""
    classes, dets, gts = _by_class(predictions, ground_truth)
    aps = []
    for k in classes:
        entries = [(s, i, b) for i, det in enumerate(dets) if k in det for b, s in zip(*det[k])]
        entries.sort(key=lambda e: -e[0])  # stable: ties keep image order
        taken = [np.zeros(len(gt.get(k, ())), dtype=bool) for gt in gts]
        num_gt = sum(len(t) for t in taken)
        tp = np.zeros(len(entries))
        for n, (_, i, box) in enumerate(entries):
            g = gts[i].get(k)
            if g is None or len(g) == 0:
                continue
            ious = _iou(box[None], g)[0]
            best = int(np.argmax(ious))
            if ious[best] > iou_threshold and not taken[i][best]:
                tp[n], taken[i][best] = 1, True
        tp_sum, fp_sum = np.cumsum(tp), np.cumsum(1 - tp)
        recall = np.concatenate([[0.0], tp_sum / num_gt, [1.0]])
        precision = np.concatenate([[0.0], tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(float).eps), [0.0]])
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        steps = np.nonzero(recall[1:] != recall[:-1])[0]
        aps.append(float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1])))
    return float(np.mean(aps)) if aps else -1.0


def to_coco_dicts(ground_truth: Sequence[GroundTruth], predictions: Sequence[Prediction] | None = None,
                  classes: Sequence[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO-format ground truth (a dataset dict) and detections (a result list), boxes as ``[x, y, w, h]``;
    image ids are ``1..N``, category ids the labels, ``area`` the box area."""
    images, annotations, results, labels_seen = [], [], [], set()
    for i, (boxes, labels) in enumerate(ground_truth, start=1):
        images.append({"id": i})
        for box, label in zip(_np(boxes).reshape(-1, 4), _np(labels, np.int64).reshape(-1)):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            labels_seen.add(int(label))
    for i, (boxes, scores, labels) in enumerate(predictions or (), start=1):
        for box, score, label in zip(_np(boxes).reshape(-1, 4), _np(scores).reshape(-1),
                                     _np(labels, np.int64).reshape(-1)):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": i, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    ids = range(len(classes)) if classes is not None else sorted(labels_seen)
    categories = [{"id": int(k), "name": classes[k] if classes is not None else str(k)} for k in ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results
