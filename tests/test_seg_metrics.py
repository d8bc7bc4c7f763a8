"""Segmentation metrics on hand-made masks whose values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dltricks.tasks.segmentation.metrics import (ISBIPixelError, binary_segmentation_metrics, boundary_band,
                                                 boundary_f1, dice_score, iou_score, isbi_pixel_error, mask_boundary,
                                                 pixel_accuracy, tolerant_dice)


def _mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in r] for r in rows])[None]  # (1, H, W)


PRED = _mask(["##..",
              "##..",
              "....",
              "...."])
TRUE = _mask(["###.",
              "###.",
              "....",
              "...."])


class _Loader:
    """Whole images, ``batch`` per batch; records the epochs it was asked for."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch: int = 1) -> None:
        self.images, self.targets, self.batch, self.epochs = images, targets, batch, []

    def iter_epoch(self, epoch: int):
        self.epochs.append(epoch)
        for i in range(0, len(self.images), self.batch):
            yield self.images[i:i + self.batch], self.targets[i:i + self.batch]


def test_overlap_metrics_by_hand() -> None:
    # |P| = 4, |G| = 6, |P n G| = 4, |P u G| = 6, 2 of 16 pixels disagree.
    torch.testing.assert_close(pixel_accuracy(PRED, TRUE), torch.tensor([14 / 16]))
    torch.testing.assert_close(iou_score(PRED, TRUE), torch.tensor([4 / 6]))
    torch.testing.assert_close(dice_score(PRED, TRUE), torch.tensor([8 / 10]))
    # Dice = 2 IoU / (1 + IoU) on any masks.
    iou = iou_score(PRED, TRUE)
    torch.testing.assert_close(dice_score(PRED, TRUE), 2 * iou / (1 + iou))


def test_empty_masks_conventions() -> None:
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert iou_score(empty, empty).item() == 1.0 and dice_score(empty, empty).item() == 1.0
    assert dice_score(PRED, empty).item() == 0.0
    assert boundary_f1(empty, empty).item() == 1.0
    assert boundary_f1(empty, TRUE).item() == 0.0


def test_boundary_of_a_square() -> None:
    square = torch.zeros(1, 7, 7, dtype=torch.bool)
    square[:, 1:6, 1:6] = True
    boundary = mask_boundary(square)
    expected = square.clone()
    expected[:, 2:5, 2:5] = False  # the 5x5 square minus its 3x3 interior
    assert torch.equal(boundary, expected)
    # A mask that fills the image has no boundary (the image border does not count).
    assert not mask_boundary(torch.ones(1, 5, 5, dtype=torch.bool)).any()


def test_boundary_f1_tolerance() -> None:
    true = torch.zeros(1, 12, 12, dtype=torch.bool)
    true[:, 3:9, 3:9] = True
    shifted = torch.roll(true, shifts=1, dims=2)  # the same square one pixel to the right
    assert boundary_f1(true, true, tolerance=0).item() == 1.0
    assert boundary_f1(shifted, true, tolerance=1).item() == 1.0
    strict = boundary_f1(shifted, true, tolerance=0).item()
    # Both boundaries have 20 px; the shifted top and bottom rows keep 5 of their 6 pixels on the true
    # boundary and the shifted left/right columns none of their inner 4: 10 / 20 -> precision = recall = 0.5.
    assert strict == pytest.approx(0.5)


def test_boundary_band() -> None:
    true = torch.zeros(1, 9, 9, dtype=torch.bool)
    true[:, :, :4] = True  # vertical edge between columns 3 and 4
    band = boundary_band(true, width=1)
    assert band[0, :, 2:6].all() and not band[0, :, :2].any() and not band[0, :, 6:].any()


def test_batch_metrics_are_sums_over_images() -> None:
    logits = torch.where(torch.cat([PRED, TRUE])[:, None], 5.0, -5.0)  # (2, 1, 4, 4): image 1 is perfect
    target = torch.cat([TRUE, TRUE])[:, None].float()
    sums = binary_segmentation_metrics(logits, target, loss_fn=lambda z, y: (z * 0).sum() + 1.0)
    assert sums["count"] == 2.0
    assert sums["dice"] == pytest.approx(0.8 + 1.0)
    assert sums["iou"] == pytest.approx(4 / 6 + 1.0)
    assert sums["pixel_accuracy"] == pytest.approx(14 / 16 + 1.0)
    assert sums["loss"] == pytest.approx(2.0)
    assert sums["dice_background"] == pytest.approx(2 * 10 / (12 + 10) + 1.0)


def test_tolerant_dice_forgives_one_pixel_shifts_only() -> None:
    # A 2-pixel-wide vertical "membrane" and the same membrane one and three pixels to the right.
    true = torch.zeros(1, 8, 12, dtype=torch.bool)
    true[:, :, 4:6] = True
    one_off = torch.roll(true, shifts=1, dims=2)
    three_off = torch.roll(true, shifts=3, dims=2)
    # Strict Dice: |P n G| = 8 of |P| = |G| = 16 -> 0.5; with one pixel of tolerance all of P lies next to G.
    assert dice_score(one_off, true).item() == pytest.approx(0.5)
    assert tolerant_dice(one_off, true, tolerance=0).item() == pytest.approx(0.5)
    assert tolerant_dice(one_off, true, tolerance=1).item() == 1.0
    # Three pixels off is still wrong at tolerance 1: no pixel of P is within 1 px of G.
    assert tolerant_dice(three_off, true, tolerance=1).item() == 0.0
    # A thicker prediction: columns 3..6 (32 px) against 4..5: precision 1 at t=1, recall 1.
    thick = torch.zeros_like(true)
    thick[:, :, 3:7] = True
    assert tolerant_dice(thick, true, tolerance=1).item() == 1.0
    assert dice_score(thick, true).item() == pytest.approx(2 * 16 / (32 + 16))
    empty = torch.zeros_like(true)
    assert tolerant_dice(empty, empty).item() == 1.0 and tolerant_dice(empty, true).item() == 0.0
    with pytest.raises(ValueError, match="tolerance"):
        tolerant_dice(true, true, tolerance=-1)


def test_isbi_pixel_error_is_one_minus_the_best_f_score_over_thresholds() -> None:
    # 2x4 image, positives in the first row. Probabilities: a true pixel at 0.95 and 0.55 and 0.25 and 0.05,
    # a false pixel at 0.45, the rest 0.
    true = torch.tensor([[[True, True, True, True], [False, False, False, False]]])
    prob = torch.tensor([[[0.95, 0.55, 0.25, 0.05], [0.45, 0.0, 0.0, 0.0]]])
    # Longhand F1 at each challenge threshold t (pixel positive when prob > t):
    #   t = 0.0: P = 5 px, TP = 4 -> 8 / 9; t = 0.1 or 0.2: P = 4, TP = 3 -> 6 / 8;
    #   t = 0.3, 0.4: P = 3, TP = 2 -> 4 / 7; t = 0.5: P = 2, TP = 2 -> 4 / 6; ... -> best 8 / 9 at t = 0.0.
    error, threshold = isbi_pixel_error(prob, true)
    assert error == pytest.approx(1 - 8 / 9) and threshold == 0.0
    # The streaming form pools pixels over batches exactly like one call on the whole stack.
    metric = ISBIPixelError()
    metric.update(prob[:, :1], true[:, :1])
    metric.update(prob[:, 1:], true[:, 1:])
    assert metric.compute() == pytest.approx((error, threshold))
    # A perfect probability map scores 0; the cut-off is "greater than", as in the challenge's Fiji code.
    assert isbi_pixel_error(true.float(), true) == (0.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        isbi_pixel_error(prob[:, :1], true)


def test_evaluate_segmentation_on_an_imperfect_prediction_by_hand() -> None:
    """Every metric of evaluate_segmentation (what the ISBI task reports) on two 8x8 images, worked out by hand.

    Image 1: the membrane (foreground) is the 2x2 block at the top-left; the prediction misses its pixel
    (1, 1) and adds a false membrane pixel at (7, 7). Image 2: no membrane, none predicted. Each image is
    one batch. Logits: -3 everywhere except the five pixels listed below.
    """
    from dltricks.tasks.segmentation.evaluate import evaluate_segmentation

    logits = torch.full((2, 1, 8, 8), -3.0)
    for (r, c), value in {(0, 0): 3.0, (0, 1): 1.0, (1, 0): 2.0, (1, 1): -2.0, (7, 7): 0.5}.items():
        logits[0, 0, r, c] = value
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, :2, :2] = 1.0

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[x[:, 0, 0, 0].long()]  # the input's pixels hold its image index

    class Batches:
        def iter_epoch(self, epoch: int):
            for i in range(2):
                yield torch.full((1, 1, 8, 8), float(i)), target[i:i + 1]

    m = evaluate_segmentation(Fixed(), Batches(), loss_fn=lambda z, y: z.mean())
    # Image 1: |P| = |G| = 4, |P n G| = 3, |P u G| = 5, 2 of 64 pixels wrong; background: |~P n ~G| = 59 of 60 + 60.
    # Image 2: both masks empty, which scores 1 everywhere.
    assert m["images"] == 2.0
    assert m["dice"] == pytest.approx((6 / 8 + 1) / 2)
    assert m["iou"] == pytest.approx((3 / 5 + 1) / 2)
    assert m["pixel_accuracy"] == pytest.approx((62 / 64 + 1) / 2)
    assert m["dice_background"] == pytest.approx((118 / 120 + 1) / 2)
    assert m["dice_pooled"] == pytest.approx(6 / 8)  # pooled over both images, unlike the mean of 0.875
    # Boundaries (8-neighbours, the image border does not count): B_G = {(0,1), (1,0), (1,1)},
    # B_P = {(0,0), (0,1), (1,0), (7,7)}. Within 2 px: 3 of the 4 predicted, all 3 true -> F1 = 6/7.
    assert m["boundary_f1"] == pytest.approx((6 / 7 + 1) / 2)
    # One pixel of tolerance: P within 1 px of G: 3 of 4; G within 1 px of P: 4 of 4 -> F1 = 6/7.
    assert m["dice_tolerance1"] == pytest.approx((6 / 7 + 1) / 2)
    # The band within 2 px of the true edges is rows 0-4 x columns 0-4 (25 px, holding the miss at (1, 1)); the
    # rest is 39 px of image 1 (holding the false pixel at (7, 7)) and all 64 of image 2 (which has no edges).
    assert m["boundary_accuracy"] == pytest.approx(24 / 25)
    assert m["interior_accuracy"] == pytest.approx((38 + 64) / (39 + 64))
    # ISBI pixel error, scored on the cell interiors (the non-membrane class, 60 + 64 = 124 true pixels) with
    # p = sigmoid(-logit): 0.953 on the 123 well-predicted interior pixels, 0.378 at (7, 7), and on the membrane
    # pixels 0.047, 0.269, 0.119 and 0.881 (the missed one). F1 at t = 0.3: 125 predicted, 124 right -> 248/249,
    # the best of the 11 thresholds (t = 0.9: 246/247; t = 0.4 ... 0.8: 246/248; t = 0.0: 248/252).
    # Scored on the membrane class instead it would be 1 - 8/9 (t = 0.1).
    assert m["isbi_pixel_error"] == pytest.approx(1 / 249)
    assert m["isbi_threshold"] == 0.3
    # The loss is the mean over images of loss_fn per batch: mean logit -2.6953125 (image 1) and -3 (image 2).
    assert m["loss"] == pytest.approx((-172.5 / 64 - 3) / 2)


# ------------------------------------------------------------------ gaps found by mutation testing (issue 23)

def test_masks_with_a_channel_axis_score_as_without_and_other_shapes_are_refused() -> None:
    pred4, true4 = PRED[:, None], TRUE[:, None]  # (1, 1, 4, 4)
    for metric in (pixel_accuracy, iou_score, dice_score, boundary_f1):
        assert torch.equal(metric(pred4, true4), metric(PRED, TRUE))
    with pytest.raises(ValueError, match=r"expected one-channel masks \(B, 1, H, W\), got \(1, 2, 4, 4\)"):
        dice_score(torch.cat([pred4, pred4], 1), torch.cat([true4, true4], 1))
    with pytest.raises(ValueError, match=r"expected masks \(B, H, W\) or \(B, 1, H, W\), got \(4, 4\)"):
        iou_score(PRED[0], TRUE[0])


def test_one_pixel_masks_and_one_empty_mask() -> None:
    one = _mask(["#.", ".."])
    none = _mask(["..", ".."])
    assert iou_score(one, one).item() == 1.0 and dice_score(one, one).item() == 1.0  # 1 / 1, not 1 / 2
    assert iou_score(one, none).item() == 0.0 and dice_score(none, one).item() == 0.0  # 0 / 1, not "both empty"
    assert tolerant_dice(one, none, tolerance=1).item() == 0.0 and tolerant_dice(none, none).item() == 1.0


def test_tolerant_dice_is_per_image_and_below_one_half_by_hand() -> None:
    # Image 0: only P's corner (0, 0) and G's (1, 1) are within 1 px of each other: precision 1/4, recall 1/4,
    # F1 1/4 (precision + recall = 1/2 < 1: the harmonic mean divides by it). Image 1: identical masks, F1 1.
    p0 = _mask(["#......#", "........", "........", "........", "........", "........", "........", "#......#"])
    g0 = _mask(["........", ".#......", "....#...", "........", "..#.#...", "........", "........", "........"])
    p1 = g1 = _mask(["##......"] + ["........"] * 7)
    pred, true = torch.cat([p0, p1]), torch.cat([g0, g1])
    assert torch.allclose(tolerant_dice(pred, true, tolerance=1), torch.tensor([0.25, 1.0]))
    assert torch.allclose(tolerant_dice(pred, true, tolerance=0), dice_score(pred, true))


def test_isbi_pixel_error_edge_cases() -> None:
    with pytest.raises(ValueError, match="^thresholds: expected at least one threshold$"):
        ISBIPixelError(())
    # Nothing true and nothing predicted at any threshold: F1 = 1 by convention, error 0, the first threshold.
    metric = ISBIPixelError()
    metric.update(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3, dtype=torch.bool))  # (B, 1, H, W) probabilities
    assert metric.compute() == (0.0, 0.0)
    # One threshold only: it is the answer.
    prob = torch.tensor([[[0.9, 0.2], [0.6, 0.1]]])[:, None]  # (1, 1, 2, 2)
    true = torch.tensor([[[True, False], [False, False]]])
    assert isbi_pixel_error(prob, true, thresholds=(0.5,)) == pytest.approx((1 - 2 / 3, 0.5))
    with pytest.raises(ValueError, match=r"probability \(1, 1, 2, 2\) and target \(1, 3, 3\) differ in shape"):
        ISBIPixelError().update(prob, torch.zeros(1, 3, 3, dtype=torch.bool))


def test_binary_metrics_defaults_keys_target_layouts_and_the_loss_per_image() -> None:
    from dltricks.tasks.segmentation.metrics import SegmentationMetrics

    # Two 12 x 12 images: a 4 x 4 square, predicted 3 px to the right (image 0) and exactly (image 1).
    true = torch.zeros(2, 12, 12, dtype=torch.bool)
    true[:, 4:8, 2:6] = True
    logits = torch.full((2, 1, 12, 12), -1.0)
    logits[0, 0, 4:8, 5:9] = 1.0
    logits[1, 0, 4:8, 2:6] = 1.0
    logits[1, 0, 0, 0] = 0.0  # exactly at the threshold: background (logit > 0 is foreground)
    sums = binary_segmentation_metrics(logits, true)
    assert set(sums) == {"pixel_accuracy", "iou", "dice", "dice_background", "boundary_f1", "count"}
    assert sums["count"] == 2.0 and sums["dice"] == pytest.approx(0.25 + 1.0)  # 2 * 4 / 32 on image 0
    # The default tolerance is 2 px: a 3 px shift is not forgiven, a 3 px tolerance forgives it.
    shifted = boundary_f1(logits[:1, 0] > 0, true[:1], tolerance=2).item()
    assert shifted < 1.0 and sums["boundary_f1"] == pytest.approx(shifted + 1.0)
    assert binary_segmentation_metrics(logits, true, tolerance=3)["boundary_f1"] == pytest.approx(2.0)
    # A (B, 1, H, W) target scores as a (B, H, W) one; two logit channels are refused, naming the count.
    assert binary_segmentation_metrics(logits, true[:, None]) == sums
    with pytest.raises(ValueError, match="one logit channel, got 2"):
        binary_segmentation_metrics(torch.cat([logits, logits], 1), true)
    # The loss: one call per image, summed.
    calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(x.shape), tuple(y.shape)))
        return torch.nn.functional.binary_cross_entropy_with_logits(x[:, 0], y.float())

    with_loss = binary_segmentation_metrics(logits, true, loss_fn=loss_fn)
    per_image = [torch.nn.functional.binary_cross_entropy_with_logits(logits[i, 0], true[i].float()).item()
                 for i in range(2)]
    assert with_loss["loss"] == pytest.approx(sum(per_image)) and calls == [((1, 1, 12, 12), (1, 12, 12))] * 2
    # The task's batch_metrics object passes its options through, with the same defaults.
    assert SegmentationMetrics()(logits, true) == sums
    assert SegmentationMetrics(loss_fn, threshold=0.5, tolerance=3)(logits, true) == \
        binary_segmentation_metrics(logits, true, threshold=0.5, tolerance=3, loss_fn=loss_fn)
    assert SegmentationMetrics(threshold=-1.5)(logits, true)["pixel_accuracy"] == pytest.approx(2 * 16 / 144)


def test_default_tolerances_are_the_documented_ones() -> None:
    # A 4 x 4 square against the same square shifted by 2 px and by 3 px: each default sits at its edge.
    true = torch.zeros(1, 14, 14, dtype=torch.bool)
    true[0, 5:9, 3:7] = True
    two, three = torch.roll(true, 2, dims=2), torch.roll(true, 3, dims=2)
    for shifted in (two, three):
        assert torch.equal(boundary_f1(shifted, true), boundary_f1(shifted, true, tolerance=2))
        assert torch.equal(tolerant_dice(shifted, true), tolerant_dice(shifted, true, tolerance=1))
    assert boundary_f1(two, true).item() == 1.0 and boundary_f1(three, true).item() < 1.0
    assert tolerant_dice(two, true).item() < tolerant_dice(two, true, tolerance=2).item()
    assert torch.equal(boundary_band(true), boundary_band(true, width=2))
    assert not torch.equal(boundary_band(true, width=2), boundary_band(true, width=3))


def test_segmentation_report_fields_options_and_refusals(monkeypatch) -> None:
    from types import SimpleNamespace

    from dltricks.errors import ConfigError
    from dltricks.tasks.segmentation import evaluate as seg_eval

    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1.0

    seen: list[dict] = []
    real = seg_eval.evaluate_segmentation

    def spy(model, loader, **options):
        seen.append(options)
        return real(model, loader, **options)

    identity = torch.nn.Identity()
    # The model below returns its input: the logits are +-1.
    task = SimpleNamespace(name="cells", val_loader=_Loader(target * 2 - 1, target),
                           extra={"task_type": "segmentation"})
    assert seg_eval.is_segmentation_task(task) and not seg_eval.is_segmentation_task(SimpleNamespace(name="x"))
    plain = seg_eval.segmentation_report(identity, task)
    assert {k: plain[k] for k in ("data", "split", "foreground", "window", "overlap", "tta")} == {
        "data": "cells", "split": "val", "foreground": "class 1", "window": None, "overlap": None, "tta": False}
    assert plain["dice"] == 1.0 and plain["images"] == 1.0
    monkeypatch.setattr(seg_eval, "evaluate_segmentation", spy)
    task.extra["foreground"] = "membrane"
    report = seg_eval.segmentation_report(identity, task, window=4, overlap=0.25, tta=True)
    seg_eval.segmentation_report(identity, task)
    monkeypatch.undo()
    assert seen == [{"window": 4, "overlap": 0.25, "tta": True}, {"window": None, "overlap": 0.5, "tta": False}]
    assert (report["foreground"], report["window"], report["overlap"], report["tta"]) == ("membrane", 4, 0.25, True)
    assert seg_eval.segmentation_report(identity, task, window=1)["window"] == 1  # a 1-pixel tile is allowed
    assert seg_eval.segmentation_report(identity, task, window=4, overlap=0.0)["overlap"] == 0.0
    for options, message in (({"window": 0}, "--window: got 0, expected a positive tile size in pixels"),
                             ({"overlap": 1.0}, "--overlap: got 1.0, expected a number in [0, 1)"),
                             ({"overlap": -0.1}, "--overlap: got -0.1, expected a number in [0, 1)"),
                             ({"split": "train"}, "split 'train': data set cells offers whole-image evaluation of "
                                                  "val only"),
                             ({"split": "test"}, "split 'test': data set cells offers whole-image evaluation of "
                                                 "val only")):
        with pytest.raises(ConfigError) as err:
            seg_eval.segmentation_report(identity, task, **options)
        assert str(err.value) == message
    task.extra["train_eval_loader"] = _Loader(target * 2 - 1, target)
    assert seg_eval.segmentation_report(identity, task, split="train")["split"] == "train"
    with pytest.raises(ConfigError) as err:
        seg_eval.segmentation_report(identity, task, split="test")
    assert str(err.value) == "split 'test': data set cells offers whole-image evaluation of val and train only"


def test_save_predicted_masks_names_values_paths_and_windows(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from PIL import Image

    from dltricks.tasks.segmentation import evaluate as seg_eval

    logits = torch.full((3, 1, 4, 6), -1.0)  # the model returns its input: these are the logits
    logits[:, 0, 1, 2] = 1.0
    logits[:, 0, 2, 2] = 0.0  # exactly 0: background
    val, train = _Loader(logits, torch.zeros(3, 1, 4, 6)), _Loader(logits[:1], torch.zeros(1, 1, 4, 6))
    task = SimpleNamespace(name="cells", val_loader=val, extra={"val_slices": ["s20", "s21"], "foreground": "membrane",
                                                                 "train_slices": ["t0"], "train_eval_loader": train})
    written = seg_eval.save_predicted_masks(torch.nn.Identity(), task, tmp_path)
    assert written == [tmp_path / "s20.png", tmp_path / "s21.png", tmp_path / "2.png"] and val.epochs == [0]
    expected = np.full((4, 6), 255, np.uint8)
    expected[1, 2] = 0  # membrane black, the rest white
    for path in written:
        assert np.array_equal(np.asarray(Image.open(path)), expected)
    task.extra["foreground"] = "cell"
    (path,) = seg_eval.save_predicted_masks(torch.nn.Identity(), task, tmp_path / "train", split="train")
    assert path == tmp_path / "train" / "t0.png" and np.array_equal(np.asarray(Image.open(path)), 255 - expected)
    calls: list[dict] = []

    def windows(model, x, **options):
        calls.append(options)
        return model(x)

    monkeypatch.setattr(seg_eval, "predict_sliding_window", windows)
    seg_eval.save_predicted_masks(torch.nn.Identity(), task, tmp_path / "w", window=2, overlap=0.25, split="train")
    seg_eval.save_predicted_masks(torch.nn.Identity(), task, tmp_path / "t", tta=True, split="train")
    assert calls == [{"window": 2, "overlap": 0.25, "tta": False}, {"window": 6, "overlap": 0.5, "tta": True}]


def test_evaluate_segmentation_routes_windows_and_flips_and_its_defaults(monkeypatch) -> None:
    from dltricks.tasks.segmentation import evaluate as seg_eval

    # A 4 x 4 square predicted 3 px to the right on a 14 x 14 image: boundary F1 differs at tolerance 2 and 3.
    target = torch.zeros(1, 1, 14, 14)
    target[0, 0, 5:9, 3:7] = 1.0
    logits = torch.roll(target, 3, dims=3) * 2 - 1
    loader = _Loader(logits, target)
    plain = seg_eval.evaluate_segmentation(torch.nn.Identity(), loader)  # no parameters: evaluated on the CPU
    assert loader.epochs == [0]
    assert plain["boundary_f1"] == pytest.approx(boundary_f1(logits[:, 0] > 0, target[:, 0] > 0, tolerance=2).item())
    assert plain["boundary_f1"] != seg_eval.evaluate_segmentation(torch.nn.Identity(), loader,
                                                                  tolerance=3)["boundary_f1"]
    calls: list[dict] = []

    def windows(model, x, **options):
        calls.append(options)
        return model(x)

    monkeypatch.setattr(seg_eval, "predict_sliding_window", windows)
    assert seg_eval.evaluate_segmentation(torch.nn.Identity(), loader, window=8, overlap=0.25)["dice"] == plain["dice"]
    seg_eval.evaluate_segmentation(torch.nn.Identity(), loader, window=8, tta=True)
    seg_eval.evaluate_segmentation(torch.nn.Identity(), loader, tta=True)
    assert calls == [{"window": 8, "overlap": 0.25, "tta": False}, {"window": 8, "overlap": 0.5, "tta": True},
                     {"window": 14, "overlap": 0.0, "tta": True}]


def test_evaluate_segmentation_edges_empty_loader_thresholds_batches_and_band_width() -> None:
    from dltricks.tasks.segmentation.evaluate import evaluate_segmentation

    empty = evaluate_segmentation(torch.nn.Identity(), _Loader(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4)))
    assert empty["images"] == 0.0 and "isbi_pixel_error" not in empty
    assert (empty["dice_pooled"], empty["boundary_accuracy"], empty["interior_accuracy"]) == (1.0, 1.0, 1.0)
    # A logit of exactly 0 is background; a target of exactly 0.5 is not foreground (both strict).
    logits = torch.full((1, 1, 4, 4), -1.0)
    logits[0, 0, 0, 0] = 0.0
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 3, 3] = 0.5
    edge = evaluate_segmentation(torch.nn.Identity(), _Loader(logits, target))
    assert edge["pixel_accuracy"] == 1.0 and edge["dice"] == 1.0
    # Two images in one batch: the loss is averaged over images, not batches.
    two = torch.zeros(2, 1, 6, 6)
    two[:, 0, 2:4, 2:4] = 1.0
    m = evaluate_segmentation(torch.nn.Identity(), _Loader(two * 2 - 1, two, batch=2),
                              loss_fn=lambda z, y: torch.tensor(3.0))
    assert m["loss"] == 3.0 and m["images"] == 2.0
    # The band width reaches the boundary band.
    shifted = torch.roll(two, 1, dims=3) * 2 - 1
    wide = evaluate_segmentation(torch.nn.Identity(), _Loader(shifted, two, batch=2), band_width=0)
    narrow = evaluate_segmentation(torch.nn.Identity(), _Loader(shifted, two, batch=2))
    assert wide["boundary_accuracy"] != narrow["boundary_accuracy"]
