"""Every registered detector overfits one batch through ``fit``; Faster R-CNN's proposals and loss; bad inputs.

The shared model suite (tests/test_models.py) already runs every detector through the model contract (output,
gradients, state_dict, channels_last, odd sizes); this file adds what the suite cannot know about detection.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from dltricks import create_model, list_models
from dltricks.data.detection import DetectionDataset
from dltricks.errors import DataError, ModelError
from dltricks.layers.boxes import box_iou
from dltricks.tasks import build_task
from dltricks.tasks.detection import DetectionLoss, FasterRCNNLoss, coco_evaluate, evaluate_detection, voc_ap50
from dltricks.train import fit

DETECTORS = list_models(task="detection")
# The ResNet-18 detectors with the paper heads are slow on one core; their overfit test uses 64-channel,
# 2-conv heads (the backbone and the head code stay the same).
SMALLER_HEADS = {"retinanet_resnet18": {"num_convs": 2, "pyramid_chs": 64},
                 "fcos_resnet18": {"num_convs": 2, "pyramid_chs": 64}}


def test_every_family_is_registered() -> None:
    assert {"retinanet_tiny", "fcos_tiny", "faster_rcnn_tiny", "yolo_tiny", "detr_tiny"} <= set(DETECTORS)


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_overfits_one_batch(name: str) -> None:
    """25 steps of ``fit`` on one batch of 2 scenes (60 for Faster R-CNN, whose RoI head learns only from the
    RPN's proposals, 40 for DETR): the loss falls to under 40% of its first value and the detections on those
    scenes reach AP50 >= 0.5. Measured with seed 0: loss ratio 0.01-0.34 and AP50 0.9-1.0 for the one-stage
    detectors; for Faster R-CNN AP50 is 0.13 after 25 steps and 0.8 after 61; for DETR 0.60 after 25 steps
    (too close to the bar) and 0.90 after 40; for the sliding-window detector, whose steps see 128 windows per
    scene, AP50 1.0 after 100 steps."""
    torch.manual_seed(0)
    masks = {"masks": True} if name.startswith("mask_rcnn") else {}  # Mask R-CNN trains on the digits' ink masks
    task = build_task("mnist-detection", batch_size=2, eval_batch_size=2, train_scenes=2, val_scenes=2, **masks)
    model = create_model(name, num_classes=task.num_classes, in_chans=1, **SMALLER_HEADS.get(name, {}))
    steps = (100 if name.startswith("sliding_window") else 40 if name.startswith("detr")
             else 60) if name.startswith(("faster_rcnn", "mask_rcnn")) else 25
    recipe = {"optim": {"name": "adamw", "lr": 2e-3}, "schedule": {"name": "constant"},
              "train": {"epochs": steps, "batch_size": 2, "eval_batch_size": 2, "device": "cpu", "eval_every": steps}}
    result = fit(model, task, recipe)
    losses = [r["train_loss"] for r in result.history if "train_loss" in r]
    assert len(losses) == steps and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.4 * losses[0], losses
    metrics = evaluate_detection(model, task.train_loader)
    assert metrics["ap50"] >= 0.5, metrics
    if masks:  # Mask R-CNN's masks of thin digit strokes learn slower than its boxes: mask AP50 0.40 measured
        assert metrics["mask_ap50"] >= 0.25, metrics


def test_faster_rcnn_proposals_and_detections() -> None:
    torch.manual_seed(0)
    model = create_model("faster_rcnn_tiny", post_nms_top_k=32)
    out = model(torch.randn(3, 1, 64, 64))
    proposals, valid = out["proposals"], out["proposal_valid"]
    assert proposals.shape == (3, 32, 4) and valid.shape == (3, 32) and out["logits"].shape == (3, 32, 10)
    assert out["roi_deltas"].shape == (3, 32, 10, 4) and out["background_logits"].shape == (3, 32, 1)
    for b in range(3):
        kept = proposals[b, valid[b]]
        assert ((kept >= 0) & (kept <= 64)).all()  # clipped to the image
        iou = box_iou(kept, kept) - torch.eye(len(kept))
        assert (iou <= model.rpn_nms_thresh + 1e-6).all()  # no two proposals overlap above the NMS threshold
        assert (proposals[b, ~valid[b]] == 0).all()
    model.eval()
    for boxes, scores, labels in model.predict(torch.randn(2, 1, 64, 64), score_thresh=0.0):
        assert boxes.shape[1:] == (4,) and len(boxes) == len(scores) == len(labels) <= 100
        assert ((labels >= 0) & (labels < 10)).all() and (scores[:-1] >= scores[1:]).all()


def test_faster_rcnn_loss_takes_empty_images_and_finds_foreground() -> None:
    torch.manual_seed(0)
    model = create_model("faster_rcnn_tiny")
    out = model(torch.randn(2, 1, 64, 64))
    loss_fn = FasterRCNNLoss(10)
    empty = torch.tensor([[[0, 0, 0, 0, -1.0]], [[0, 0, 0, 0, -1.0]]])
    assert torch.isfinite(loss_fn(out, empty)) and loss_fn.last["rpn_box"] == loss_fn.last["roi_box"] == 0.0
    # A ground-truth box equal to a valid proposal makes that proposal foreground: the RoI box term appears.
    box = out["proposals"][0, 0].tolist()
    targets = torch.tensor([[box + [3.0]], [[0, 0, 0, 0, -1.0]]])
    loss = loss_fn(out, targets)
    assert torch.isfinite(loss) and loss_fn.last["roi_box"] > 0 and loss_fn.last["rpn_box"] > 0
    loss.backward()
    assert model.cls_out.weight.grad.abs().sum() > 0 and model.rpn_cls.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["retinanet_tiny", "fcos_tiny", "faster_rcnn_tiny", "yolo_tiny", "detr_tiny"])
@pytest.mark.parametrize("row, message", [([1, 1, 9, 9, 10.0], r"label must be in \[0, 10\)"),
                                          ([1, float("nan"), 9, 9, 2.0], "finite"),
                                          ([9, 1, 1, 9, 2.0], "x2 > x1")])
def test_every_loss_refuses_bad_targets(name: str, row: list, message: str) -> None:
    out = create_model(name)(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=message):
        DetectionLoss(10)(out, torch.tensor([[row]]))


@pytest.mark.parametrize("name", ["retinanet_tiny", "fcos_tiny", "faster_rcnn_tiny", "yolo_tiny", "detr_tiny"])
def test_detectors_refuse_empty_and_tiny_inputs(name: str) -> None:
    model = create_model(name).eval()
    with pytest.raises(ModelError, match="empty batch"):
        model(torch.zeros(0, 1, 64, 64))
    with pytest.raises(ModelError, match="at least 32x32"):
        model(torch.zeros(1, 1, 0, 0))


def test_faster_rcnn_refuses_bad_options() -> None:
    with pytest.raises(ModelError, match="post_nms_top_k >= 1"):
        create_model("faster_rcnn_tiny", post_nms_top_k=0)


def test_empty_data_sets_are_one_clear_line() -> None:
    classes = tuple("0123456789")
    for images, targets in [(torch.zeros(0, 1, 64, 64, dtype=torch.uint8), torch.zeros(0, 1, 5)),
                            (torch.zeros(2, 1, 0, 0, dtype=torch.uint8), -torch.ones(2, 1, 5))]:
        with pytest.raises(DataError, match="is empty") as err:
            DetectionDataset(images, targets, classes, "bad", (0.1,), (0.3,))
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("box, message", [([5.0, 0.0, 1.0, 4.0], "x2 >= x1"),
                                          ([0.0, float("nan"), 1.0, 4.0], "finite")])
def test_metrics_refuse_bad_boxes(box: list, message: str) -> None:
    good = (torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([1]))
    bad = (torch.tensor([box]), torch.tensor([1]))
    for evaluate in (coco_evaluate, voc_ap50):
        with pytest.raises(ValueError, match=message):
            evaluate([(*bad[:1], torch.tensor([0.9]), bad[1])], [good])
        with pytest.raises(ValueError, match=message):
            evaluate([(*good[:1], torch.tensor([0.9]), good[1])], [bad])


def test_cli_eval_reports_coco_metrics_for_a_detector(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from dltricks.cli import main

    run = tmp_path / "run"
    assert main(["train", "retinanet_tiny", "--data", "mnist-detection", "--data-opt", "train_scenes=8",
                 "--data-opt", "val_scenes=4", "--epochs", "1", "--set", "train.batch_size=4", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "retinanet_tiny" and report["split"] == "val" and report["images"] == 4
    assert all(0 <= report[k] <= 1 for k in ("map", "ap50", "ap75", "voc_ap50")) and report["loss"] > 0
    assert main(["eval", str(run), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "8 images" in out and "COCO mAP" in out and "AP50" in out
    # --draw: the predictions and ground truth of the first images, as a PNG
    picture = tmp_path / "figs" / "predictions.png"
    assert main(["eval", str(run), "--draw", str(picture), "--draw-images", "3", "--draw-score", "0"]) == 0
    assert f"predictions drawn on 3 images: {picture}" in capsys.readouterr().out
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(picture.parent.glob(".*tmp*"))
    assert main(["eval", str(run), "--draw", str(picture), "--draw-images", "0"]) == 2
    assert "--draw-images must be >= 1" in capsys.readouterr().err
