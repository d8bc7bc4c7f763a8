"""MNIST-detection scenes, the detection losses and a short fit of each detector family."""

from __future__ import annotations

import pytest
import torch

from dltricks import create_model
from dltricks.data.detection import DetectionDataset, MnistSceneConfig, make_mnist_scenes
from dltricks.data.mnist import load_mnist_embedded
from dltricks.errors import DataError
from dltricks.tasks import build_task
from dltricks.tasks.detection.losses import DetectionLoss, assign_points, match_anchors
from dltricks.train import fit


@pytest.fixture(scope="module")
def digits():
    return load_mnist_embedded("val")


def test_scenes_are_reproducible_and_boxes_hold_the_ink(digits) -> None:
    config = MnistSceneConfig()
    a = make_mnist_scenes(digits, 20, split="train", seed=3, config=config)
    b = make_mnist_scenes(digits, 20, split="train", seed=3, config=config)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, make_mnist_scenes(digits, 20, split="val", seed=3).images)
    for i in range(len(a)):
        boxes, labels = a.boxes_of(i)
        assert 1 <= len(boxes) <= config.max_digits and ((labels >= 0) & (labels < 10)).all()
        ink = a.images[i, 0] >= config.box_threshold
        covered = torch.zeros_like(ink)
        for x1, y1, x2, y2 in boxes.long().tolist():
            assert ink[y1:y2, x1:x2].any(dim=1).all()  # every row of a box holds ink (tight box)
            covered[y1:y2, x1:x2] = True
        assert not (ink & ~covered).any()  # no ink outside the boxes


@pytest.mark.parametrize("row, message", [([5, 0, 1, 4, 0], "x2 <= x1"), ([0, float("nan"), 1, 4, 0], "non-finite"),
                                          ([0, 0, 4, 4, 12], "label outside"), ([0, 0, 90, 4, 1], "outside the")])
def test_bad_boxes_are_one_clear_line(row: list, message: str) -> None:
    targets = torch.tensor([[row]], dtype=torch.float32)
    with pytest.raises(DataError, match=message) as err:
        DetectionDataset(torch.zeros(1, 1, 64, 64, dtype=torch.uint8), targets, tuple("0123456789"), "bad", (0.1,),
                         (0.3,))
    assert "\n" not in str(err.value)


def test_loss_refuses_a_class_outside_the_head_and_takes_empty_images() -> None:
    model = create_model("retinanet_tiny")
    out = model(torch.randn(2, 1, 64, 64))
    empty = torch.tensor([[[0, 0, 0, 0, -1.0]], [[0, 0, 0, 0, -1.0]]])
    assert torch.isfinite(DetectionLoss(10)(out, empty))
    with pytest.raises(ValueError, match=r"label must be in \[0, 10\)"):
        DetectionLoss(10)(out, torch.tensor([[[1, 1, 9, 9, 10.0]], [[0, 0, 0, 0, -1.0]]]))


def test_every_box_gets_an_anchor_and_a_point() -> None:
    model = create_model("fcos_tiny")
    out = model(torch.randn(1, 1, 64, 64))
    boxes = torch.tensor([[3.0, 4.0, 13.0, 20.0], [30.0, 30.0, 58.0, 60.0]])
    points, strides = out["points"][0], out["strides"][0, :, 0]
    ranges = torch.tensor([[0.0, 16.0]]).expand(len(points), -1).clone()
    ranges[strides == 16] = torch.tensor([16.0, 32.0])
    ranges[strides == 32] = torch.tensor([32.0, float("inf")])
    assigned = assign_points(points, strides, boxes, ranges)
    assert set(assigned[assigned >= 0].tolist()) == {0, 1}
    anchors = create_model("retinanet_tiny")(torch.randn(1, 1, 64, 64))["anchors"][0]
    matched = match_anchors(anchors, boxes)
    assert set(matched[matched >= 0].tolist()) == {0, 1}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet_tiny", "fcos_tiny", "faster_rcnn_tiny", "yolo_tiny", "detr_tiny"])
def test_fit_trains_a_detector_and_reports_coco_metrics(name: str) -> None:
    torch.manual_seed(0)
    task = build_task("mnist-detection", batch_size=16, eval_batch_size=32, train_scenes=48, val_scenes=16)
    model = create_model(name, num_classes=task.num_classes, in_chans=1)
    recipe = {"optim": {"name": "adamw", "lr": 2e-3}, "schedule": {"name": "constant"},
              "train": {"epochs": 2, "batch_size": 16, "eval_batch_size": 32, "device": "cpu", "eval_every": 2}}
    result = fit(model, task, recipe)
    history = [r for r in result.history if "train_loss" in r]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for key in ("val_map", "val_ap50", "val_ap75", "val_voc_ap50", "val_loss"):
        assert 0 <= result.final[key] <= (1 if key != "val_loss" else 100), key
