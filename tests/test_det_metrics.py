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


# ------------------------------------------------------------------ gaps found by mutation testing (issue 23)

from dltricks.tasks.detection import metrics as det_metrics  # noqa: E402


def _box(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    return np.array([[x1, y1, x2, y2]], dtype=float)


def test_bad_inputs_name_the_image_the_box_and_what_was_expected() -> None:
    good = (_box(0, 0, 4, 4), np.array([0]))
    pred = (_box(0, 0, 4, 4), np.array([0.5]), np.array([0]))
    expected = "; boxes must be finite (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1"
    cases = [  # (predictions, ground truth, message): the bad box is the second one of the second image
        ([pred, (np.concatenate([_box(0, 0, 1, 1), _box(0, 0, float("nan"), 1)]), np.ones(2), np.zeros(2))],
         [good, good], "predictions of image 1: box 1 is [0.0, 0.0, nan, 1.0]" + expected),
        ([pred, pred], [good, (np.concatenate([_box(0, 0, 1, 1), _box(5, 0, 4, 1)]), np.zeros(2))],
         "ground truth of image 1: box 1 is [5.0, 0.0, 4.0, 1.0]" + expected),
        ([pred, (np.concatenate([_box(0, 0, 1, 1), _box(0, 5, 1, 4)]), np.ones(2), np.zeros(2))],
         [good, good], "predictions of image 1: box 1 is [0.0, 5.0, 1.0, 4.0]" + expected),
        ([pred], [good, good], "1 images of predictions but 2 of ground truth"),
        ([pred, (_box(0, 0, 1, 1), np.array([float("inf")]), np.zeros(1))], [good, good],
         "predictions of image 1: scores must be finite, got [inf]"),
    ]
    for preds, gt, message in cases:
        for call in (lambda: coco_evaluate(preds, gt, backend="numpy"), lambda: voc_ap50(preds, gt)):
            with pytest.raises(ValueError) as err:
                call()
            assert str(err.value) == message
    with pytest.raises(ValueError) as err:
        coco_evaluate([pred], [good], iou_type="mask")
    assert str(err.value) == "iou_type must be 'bbox' or 'segm', got 'mask'"
    # Zero-width and zero-height boxes are valid (x2 == x1, y2 == y1).
    for box in (_box(2, 2, 2, 6), _box(2, 2, 6, 2)):
        assert coco_evaluate([(box, np.array([0.5]), np.array([0]))], [(box, np.array([0]))],
                             backend="numpy")["map"] == 0.0


def test_segm_inputs_need_masks_on_both_sides_one_per_box() -> None:
    mask = np.zeros((1, 6, 8), bool)
    mask[0, 1:4, 2:6] = True
    gt = [(_box(2, 1, 6, 4), np.array([0]), mask)]
    pred = [(_box(2, 1, 6, 4), np.array([0.9]), np.array([0]), mask)]
    need = ("image 0: segm AP needs predictions (boxes, scores, labels, masks) and ground truth (boxes, labels, "
            "masks)")
    for p, g in ((pred, [gt[0][:2]]), ([pred[0][:3]], gt)):
        with pytest.raises(ValueError) as err:
            coco_evaluate(p, g, iou_type="segm")
        assert str(err.value) == need
    with pytest.raises(ValueError) as err:
        coco_evaluate(pred, [(gt[0][0], gt[0][1], np.zeros((2, 6, 8), bool))], iou_type="segm")
    assert str(err.value) == ("ground truth of image 0: segm AP needs one (H, W) mask per box, got masks of shape "
                              "(2, 6, 8) for 1 boxes")
    with pytest.raises(ValueError) as err:
        coco_evaluate([(*pred[0][:3], mask[0])], gt, iou_type="segm")
    assert str(err.value) == ("predictions of image 0: segm AP needs one (H, W) mask per box, got masks of shape "
                              "(6, 8) for 1 boxes")
    # Masks given as 0/255 bytes on a non-square image are masks all the same: a perfect prediction scores 1.
    as_bytes = mask.astype(np.uint8) * 255
    for backend in ("numpy", "pycocotools"):
        result = coco_evaluate([(*pred[0][:3], as_bytes)], [(*gt[0][:2], as_bytes)], iou_type="segm", backend=backend)
        assert result["map"] == pytest.approx(1.0, abs=1e-12)


def test_tensors_that_require_gradients_are_read_without_them() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    scores = torch.tensor([0.9], requires_grad=True)
    gt = [(boxes, torch.tensor([1]))]
    result = coco_evaluate([(boxes, scores, torch.tensor([1]))], gt, backend="numpy")
    assert result["map"] == pytest.approx(1.0, abs=1e-12)
    assert voc_ap50([(boxes * 1, scores, torch.tensor([1]))], gt) == pytest.approx(1.0, abs=1e-12)


def test_values_are_read_as_float64_and_any_shape_of_one_value_per_box() -> None:
    assert det_metrics._np(torch.tensor([0.1], dtype=torch.float32)).dtype == np.float64
    assert det_metrics._np(np.array([3], dtype=np.int32)).dtype == np.float64
    # Scores and labels as columns (n, 1), boxes flat (4 n,): read as n values and n boxes.
    gt = [(np.array([0.0, 0, 10, 10, 20, 0, 30, 10]), np.array([[0], [1]]))]
    preds = [(np.array([0.0, 0, 10, 10, 20, 0, 30, 10]), np.array([[0.9], [0.8]]), np.array([[0], [1]]))]
    for backend in ("numpy", "pycocotools"):
        assert coco_evaluate(preds, gt, backend=backend)["map"] == pytest.approx(1.0, abs=1e-12)
    assert voc_ap50(preds, gt) == pytest.approx(1.0, abs=1e-12)
    dataset, results = to_coco_dicts(gt, preds)
    assert [a["category_id"] for a in dataset["annotations"]] == [0, 1] and len(results) == 2


def test_box_and_mask_iou_edge_cases() -> None:
    iou = det_metrics._iou
    assert iou(_box(0, 0, 2, 2), _box(3, 0, 5, 2))[0, 0] == 0.0  # apart
    assert iou(_box(0, 0, 2, 2), _box(2, 0, 4, 2))[0, 0] == 0.0  # touching
    assert iou(_box(0, 0, 1, 1), _box(0, 0, 1, 1))[0, 0] == 1.0  # union exactly 1
    assert iou(_box(0, 0, 0.5, 0.5), _box(0, 0, 0.5, 1))[0, 0] == 0.5  # union below 1
    assert iou(_box(1, 1, 1, 1), _box(1, 1, 1, 1))[0, 0] == 0.0  # two points: no union, IoU 0
    pixel = np.zeros((1, 9), bool)
    pixel[0, 4] = True
    assert det_metrics._mask_iou(pixel, pixel)[0, 0] == 1.0
    empty = np.zeros((1, 9), bool)
    assert det_metrics._mask_iou(empty, empty)[0, 0] == 0.0


@pytest.mark.parametrize("backend", ["pycocotools", "numpy"])
def test_an_area_of_exactly_32_squared_counts_as_small_and_as_medium(backend: str) -> None:
    # COCO ignores an object when its area is < lo or > hi: 1,024 px^2 lies in both ranges. Image 0 has the
    # object, found; a false positive of the same area scores higher on image 1: precision 1/2 at recall 1.
    gt = [(_box(0, 0, 32, 32), np.array([0])), (np.zeros((0, 4)), np.zeros(0))]
    preds = [(_box(0, 0, 32, 32), np.array([0.5]), np.array([0])),
             (_box(0, 0, 32, 32), np.array([0.9]), np.array([0]))]
    result = coco_evaluate(preds, gt, backend=backend)
    assert result["ap_small"] == result["ap_medium"] == pytest.approx(0.5) and result["ap_large"] == -1.0


def random_tied_case(seed: int, images: int = 4) -> tuple[list, list]:
    """Many detections per class (30 per image) whose scores take only 3 values: the order among ties decides
    the curve, and COCO breaks ties by a stable sort; box sizes across the area ranges' edges."""
    rng = np.random.default_rng(seed)
    gt, preds = [], []
    for _ in range(images):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 150, (n, 2))
        boxes = np.concatenate([xy, xy + rng.choice([20.0, 31.5, 32.0, 33.0, 95.0, 96.0, 97.0, 120.0], (n, 2))], 1)
        labels = rng.integers(0, 2, n)
        gt.append((boxes, labels))
        picks = rng.integers(0, n, 30)
        det = boxes[picks] + rng.normal(0, 4, (30, 4))
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        preds.append((det, rng.choice([0.3, 0.6, 0.9], 30), labels[picks]))
    return gt, preds


@pytest.mark.parametrize("seed", range(3))
def test_numpy_backend_matches_pycocotools_with_tied_scores_and_a_detection_limit(seed: int) -> None:
    gt, preds = random_tied_case(seed)
    names = ["map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"]
    ref = pycocotools_stats(gt, preds)
    ours = coco_evaluate(preds, gt, backend="numpy")
    for name, value in zip(names, ref[:6]):
        assert math.isclose(ours[name], value, abs_tol=1e-9), (name, ours[name], value)
    # At most 3 detections per image: both backends keep the same 3.
    limited = coco_evaluate(preds, gt, backend="numpy", max_detections=3)
    reference = coco_evaluate(preds, gt, max_detections=3)
    assert limited["map"] != ours["map"]
    for name in names:
        assert math.isclose(limited[name], reference[name], abs_tol=1e-9), name


def test_the_default_backend_is_pycocotools_and_prints_nothing(monkeypatch, capsys) -> None:
    gt, preds = random_case(0)
    numpy_result = coco_evaluate(preds, gt, backend="numpy")

    def refuse(*args, **kwargs):
        raise AssertionError("the NumPy matcher ran although pycocotools was asked for")

    monkeypatch.setattr(det_metrics, "_match_image", refuse)
    result = coco_evaluate(preds, gt)
    assert result == pytest.approx(numpy_result, abs=1e-9)
    assert capsys.readouterr().out == ""


def test_mask_ap_sizes_objects_by_their_pixels_not_their_boxes() -> None:
    # A disc of 709 px (small) inside a 30 x 30 box... and a ring of 1,100 px (medium) whose box is 100 x 100.
    yy, xx = np.mgrid[:120, :120]
    disc = ((xx - 20) ** 2 + (yy - 20) ** 2 < 15 ** 2)[None]
    ring = (np.abs(np.hypot(xx - 60, yy - 60) - 40) < 2.2)[None]
    assert disc.sum() < 32 ** 2 < ring.sum() < 96 ** 2
    gt = [(_box(5, 5, 35, 35), np.array([0]), disc), (_box(10, 10, 110, 110), np.array([0]), ring)]
    preds = [(_box(5, 5, 35, 35), np.array([0.9]), np.array([0]), disc),
             (_box(10, 10, 110, 110), np.array([0.8]), np.array([0]), ring)]
    for backend in ("pycocotools", "numpy"):
        result = coco_evaluate(preds, gt, iou_type="segm", backend=backend)
        assert result["ap_small"] == result["ap_medium"] == pytest.approx(1.0, abs=1e-12), backend
        assert result["ap_large"] == -1.0, backend


def test_voc_ap50_skips_images_without_the_class_and_needs_iou_above_one_half() -> None:
    # Class 0 on image 0 (one object), class 1 only on image 1. Detections by score: class 0 on image 1 (no
    # object of class 0 there: FP), class 0 on image 0 at IoU exactly 0.5 (VOC needs > 0.5: FP), class 0 on
    # image 0 exact (TP). Class 0: precision 0, 0, 1/3 at recall 0, 0, 1: AP 1/3. Class 1: found, AP 1.
    gt = [(_box(0, 0, 10, 10), np.array([0])), (_box(0, 0, 10, 10), np.array([1]))]
    preds = [(np.concatenate([_box(0, 0, 10, 5), _box(0, 0, 10, 10)]), np.array([0.8, 0.7]), np.array([0, 0])),
             (np.concatenate([_box(0, 0, 10, 10), _box(0, 0, 10, 10)]), np.array([0.9, 0.6]), np.array([0, 1]))]
    assert voc_ap50(preds, gt) == pytest.approx((1 / 3 + 1.0) / 2)
    assert voc_ap50(preds, gt, iou_threshold=0.49) == pytest.approx((1 / 2 + 1.0) / 2)
    # No ground truth at all: -1, as for COCO.
    assert voc_ap50(preds, [(np.zeros((0, 4)), np.zeros(0))] * 2) == -1.0


def test_voc_ap50_of_a_curve_that_rises_after_a_fall() -> None:
    # One class, 4 objects on one image; ranking TP, FP, FP, TP, TP, TP: precision 1, 1/2, 1/3, 1/2, 3/5, 2/3
    # at recall 1/4, 1/4, 1/4, 1/2, 3/4, 1. Envelope: 1 up to 1/4, then 2/3: AP = 1/4 + 3/4 * 2/3 = 3/4.
    objects = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], float)
    misses = np.array([[0, 50, 10, 60], [20, 50, 30, 60]], float)
    boxes = np.concatenate([objects[:1], misses, objects[1:]])
    preds = [(boxes, np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), np.zeros(6, int))]
    assert voc_ap50(preds, [(objects, np.zeros(4, int))]) == pytest.approx(0.75)


def test_to_coco_dicts_field_by_field() -> None:
    gt = [(np.array([[1.0, 2.0, 4.0, 8.0], [0.0, 0.0, 1.0, 1.0]]), np.array([2, 0])), (np.zeros((0, 4)), [])]
    preds = [(np.array([[1.0, 2.0, 3.0, 5.0]]), np.array([0.25]), np.array([2])), (np.zeros((0, 4)), [], [])]
    dataset, results = to_coco_dicts(gt, preds, classes=["cat", "dog", "bird"])
    assert dataset["images"] == [{"id": 1}, {"id": 2}]
    assert dataset["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 3.0, 6.0], "area": 18.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 0, "bbox": [0.0, 0.0, 1.0, 1.0], "area": 1.0, "iscrowd": 0}]
    assert dataset["categories"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 2, "name": "bird"}]
    assert results == [{"image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 2.0, 3.0], "score": 0.25}]
    unnamed, _ = to_coco_dicts(gt)
    assert unnamed["categories"] == [{"id": 0, "name": "0"}, {"id": 2, "name": "2"}]


def test_voc_ap50_envelope_runs_from_the_right() -> None:
    # 3 objects; ranking TP, FP, TP, FP, FP, TP: precision 1, 1/2, 2/3, 1/2, 2/5, 1/2 at recall 1/3, 1/3, 2/3,
    # 2/3, 2/3, 1. Envelope from the right: 1, 2/3, 2/3, 1/2, 1/2, 1/2: AP = (1 + 2/3 + 1/2) / 3.
    objects = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float)
    miss = np.array([[0, 50, 10, 60]], float)
    boxes = np.concatenate([objects[:1], miss, objects[1:2], miss, miss, objects[2:]])
    preds = [(boxes, np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), np.zeros(6, int))]
    assert voc_ap50(preds, [(objects, np.zeros(3, int))]) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
