"""COCO and VOC AP (dltricks.tasks.detection.metrics) against pycocotools and a case worked out by hand."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from dltricks.tasks.detection.metrics import coco_evaluate, to_coco_dicts, voc_ap50


def pycocotools_stats(gt: list, preds: list) -> np.ndarray:
    COCO = pytest.importorskip("pycocotools.coco").COCO
    COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    dataset, results = to_coco_dicts(gt, preds)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def random_case(seed: int, images: int = 6) -> tuple[list, list]:
    """Ground truth of 0-4 boxes in 3 classes (sizes across COCO's small/medium/large) and noisy detections."""
    rng = np.random.default_rng(seed)
    gt, preds = [], []
    for _ in range(images):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 130, (n, 2))], axis=1)
        labels = rng.integers(0, 3, n)
        gt.append((boxes, labels))
        # Jittered copies of the true boxes (some with a wrong class) plus random false positives.
        jitter = boxes + rng.normal(0, 6, boxes.shape)
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        wrong = rng.random(n) < 0.2
        k = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 200, (k, 2))
        false = np.concatenate([fxy, fxy + rng.uniform(8, 100, (k, 2))], axis=1)
        det_boxes = np.concatenate([jitter, false])
        det_labels = np.concatenate([np.where(wrong, (labels + 1) % 3, labels), rng.integers(0, 3, k)])
        preds.append((det_boxes, rng.random(len(det_boxes)), det_labels))
    return gt, preds


@pytest.mark.parametrize("seed", range(6))
def test_coco_map_matches_pycocotools(seed: int) -> None:
    """Our NumPy implementation against pycocotools called by hand; the default backend (pycocotools through
    ``coco_evaluate``) gives the same numbers."""
    gt, preds = random_case(seed)
    ours = coco_evaluate(preds, gt, backend="numpy")
    default = coco_evaluate(preds, gt)
    ref = pycocotools_stats(gt, preds)
    names = ["map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"]
    for name, value in zip(names, ref[:6]):
        assert math.isclose(ours[name], value, abs_tol=1e-9), (name, ours[name], value)
        assert default[name] == value, (name, default[name], value)


def hand_case() -> tuple[list, list]:
    # One image, two objects of class 0 (100 px^2 each). Detections by score: a perfect box (0.9), a box on
    # nothing (0.8), a box on the second object cut to IoU 0.63 (0.7).
    gt = [(np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float), np.array([0, 0]))]
    preds = [(np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 6.3]], dtype=float),
              np.array([0.9, 0.8, 0.7]), np.array([0, 0, 0]))]
    return gt, preds


def test_coco_map_of_a_case_worked_by_hand() -> None:
    """At t <= 0.6 the ranking is TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; the envelope is 1 up
    to recall 0.5 (51 of the 101 points) and 2/3 above (50 points). At t >= 0.65 only the first is a TP:
    precision 1 up to recall 0.5, 0 beyond. mAP averages 3 thresholds of the first kind and 7 of the second."""
    gt, preds = hand_case()
    ap_low = (51 * 1.0 + 50 * 2 / 3) / 101
    ap_high = 51 / 101
    expected = (3 * ap_low + 7 * ap_high) / 10
    for backend in ("pycocotools", "numpy"):  # the maintained package (the default) and our own code
        ours = coco_evaluate(preds, gt, backend=backend)
        assert math.isclose(ours["map"], expected, abs_tol=1e-12), backend
        assert math.isclose(ours["ap50"], ap_low, abs_tol=1e-12), backend
        assert math.isclose(ours["ap75"], ap_high, abs_tol=1e-12), backend
        assert ours["ap_medium"] == -1.0 and ours["images"] == 1  # no object of 32^2-96^2 px


def test_voc_ap50_by_hand_and_perfect() -> None:
    """VOC on the hand case: recall/precision (1/2, 1), (1/2, 1/2), (1, 2/3); area under the envelope =
    0.5 * 1 + 0.5 * 2/3."""
    gt, preds = hand_case()
    assert math.isclose(voc_ap50(preds, gt), 0.5 + 0.5 * 2 / 3, abs_tol=1e-12)
    perfect = [(b, np.ones(len(b)), lab) for b, lab in gt]
    assert voc_ap50(perfect, gt) == 1.0 and coco_evaluate(perfect, gt)["map"] == 1.0
    # A duplicate detection of the same object is a false positive in both protocols.
    dup = [(np.concatenate([gt[0][0], gt[0][0][:1]]), np.array([0.9, 0.8, 0.95]), np.array([0, 0, 0]))]
    assert voc_ap50(dup, gt) < 1.0


@pytest.mark.parametrize("backend", ["pycocotools", "numpy"])
def test_inputs_may_be_tensors_and_empty(backend: str) -> None:
    gt = [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), (torch.tensor([[1.0, 1, 5, 5]]), torch.tensor([2]))]
    preds = [(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))] * 2
    result = coco_evaluate(preds, gt, backend=backend)
    assert result["map"] == 0.0 and result["images"] == 2
    assert coco_evaluate(preds, [gt[0], gt[0]], backend=backend)["map"] == -1.0  # no ground truth at all
    # a detection only on the image without objects: a false positive, AP 0 for class 2
    fp = [(torch.tensor([[1.0, 1, 5, 5]]), torch.tensor([0.9]), torch.tensor([2])), preds[1]]
    assert coco_evaluate(fp, gt, backend=backend)["map"] == 0.0
    with pytest.raises(ValueError, match="backend"):
        coco_evaluate(preds, gt, backend="torchmetrics")


def random_mask_case(seed: int, images: int = 5, size: int = 40) -> tuple[list, list]:
    """Ground-truth masks (blobs of random rectangles and discs, 2 classes) and detections: noisy copies of
    them (pixels flipped, some shifted) plus random false masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    gt, preds = [], []

    def blob() -> np.ndarray:
        cx, cy, r = rng.uniform(0, size, 2).tolist() + [float(rng.uniform(2, 14))]
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        return mask if mask.any() else blob()

    for _ in range(images):
        n = int(rng.integers(0, 5))
        masks = np.stack([blob() for _ in range(n)]) if n else np.zeros((0, size, size), bool)
        labels = rng.integers(0, 2, n)
        det = masks ^ (rng.random(masks.shape) < 0.05)
        det = np.stack([np.roll(m, int(rng.integers(-3, 4)), axis=1) for m in det]) if n else det
        k = int(rng.integers(0, 3))
        det = np.concatenate([det, np.stack([blob() for _ in range(k)]) if k else det[:0]])
        det_labels = np.concatenate([labels, rng.integers(0, 2, k)])
        boxes = lambda m: np.array([[0.0, 0.0, 1.0, 1.0]] * len(m)).reshape(-1, 4)  # noqa: E731  (unused by segm)
        gt.append((boxes(masks), labels, masks))
        preds.append((boxes(det), rng.random(len(det)), det_labels, det))
    return gt, preds


@pytest.mark.parametrize("seed", range(4))
def test_coco_mask_ap_matches_pycocotools(seed: int) -> None:
    """``iou_type="segm"``: our mask IoU and area ranges against COCOeval('segm') on RLE-encoded masks."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    COCO = pytest.importorskip("pycocotools.coco").COCO
    COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    gt, preds = random_mask_case(seed)

    def rle(mask: np.ndarray) -> dict:
        r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": r["size"], "counts": r["counts"].decode("ascii")}

    images, annotations, results = [], [], []
    for i, ((_, labels, masks), (_, scores, det_labels, det)) in enumerate(zip(gt, preds), start=1):
        images.append({"id": i, "height": 40, "width": 40})
        for label, mask in zip(labels, masks):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "segmentation": rle(mask), "area": float(mask.sum()), "iscrowd": 0,
                                "bbox": [0, 0, 1, 1]})
        for score, label, mask in zip(scores, det_labels, det):
            results.append({"image_id": i, "category_id": int(label), "segmentation": rle(mask),
                            "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations,
                           "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = coco_evaluate(preds, gt, iou_type="segm", backend="numpy")
    default = coco_evaluate(preds, gt, iou_type="segm")  # pycocotools through coco_evaluate
    for name, value in zip(["map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"], evaluator.stats[:6]):
        assert math.isclose(ours[name], value, abs_tol=1e-9), (name, ours[name], value)
        assert default[name] == value, (name, default[name], value)
    with pytest.raises(ValueError, match="one \\(H, W\\) mask per box"):
        coco_evaluate([(*preds[0][:3], preds[0][3][:0])] + preds[1:], gt, iou_type="segm")
