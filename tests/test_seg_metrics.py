"""Segmentation metrics on hand-made masks whose values are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from dltricks.segmentation.metrics import (binary_segmentation_metrics, boundary_band, boundary_f1, dice_score,
                                           iou_score, mask_boundary, pixel_accuracy)


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
