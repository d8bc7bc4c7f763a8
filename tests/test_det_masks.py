"""Instance masks: the ISBI cell instances, their COCO export, Mask R-CNN's mask targets, pasting and loss.

The cell rules are checked on a hand-made label image whose instances are listed by hand; the COCO export is
read back by ``pycocotools``; the RoIAlign mask targets are checked against a crop-and-resize loop over Python
floats. Mask R-CNN's overfit test (MNIST scenes with ink masks, box and mask AP) is in tests/test_det_models.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dltricks import create_model
from dltricks.data.cells import cell_instances, instance_masks, to_coco
from dltricks.data.detection import DetectionDataset, pad_targets
from dltricks.models.detection.mask_rcnn import paste_masks
from dltricks.tasks import build_task
from dltricks.tasks.detection.losses import DetectionLoss, mask_targets

# 1 = cell interior, 0 = membrane. Cells: A (rows 0-1, cols 0-2, cut by the top and left borders), B (rows
# 0-2, cols 5-7: an L), C and D (touching only at a corner: one cell with 8-connectivity), E (one pixel).
LABEL = np.array([
    [1, 1, 1, 0, 0, 1, 1, 1],
    [1, 1, 1, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0, 0, 1],
    [0, 1, 1, 0, 0, 0, 0, 0],
    [0, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 1, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
], dtype=bool)


def test_cell_instances_of_a_hand_made_label() -> None:
    boxes, instances = cell_instances(LABEL, connectivity=4, min_area=2)
    # Raster order of the first pixel: A (0, 0), B (0, 5), C (3, 1), D (5, 3); E (1 px) is dropped.
    expected_boxes = [[0, 0, 3, 2], [5, 0, 8, 3], [1, 3, 3, 5], [3, 5, 5, 7]]
    assert boxes.tolist() == expected_boxes and boxes.dtype == np.float32
    expected = np.zeros((8, 8), dtype=np.int16)
    expected[0:2, 0:3] = 1
    expected[0, 5:8], expected[1:3, 7] = 2, 2
    expected[3:5, 1:3] = 3
    expected[5:7, 3:5] = 4
    np.testing.assert_array_equal(instances, expected)
    # 8-connectivity joins C and D (they touch at a corner); min_area=1 keeps E.
    boxes8, instances8 = cell_instances(LABEL, connectivity=8, min_area=1)
    assert boxes8.tolist() == [[0, 0, 3, 2], [5, 0, 8, 3], [1, 3, 5, 7], [6, 6, 7, 7]]
    assert instances8[6, 6] == 4 and (instances8[3:5, 1:3] == 3).all() and (instances8[5:7, 3:5] == 3).all()
    with pytest.raises(Exception, match="connectivity must be 4 or 8"):
        cell_instances(LABEL, connectivity=6)


def test_cell_instances_downscaled_keep_cells_apart() -> None:
    """Two cells separated by a 1-px membrane stay two instances at half resolution although the membrane
    vanishes (nearest neighbour reads the even columns: the ids, not the interior class, are resized)."""
    label = np.ones((8, 8), dtype=bool)
    label[:, 3] = False
    boxes, instances = cell_instances(label, scale=0.5, min_area=1)
    assert instances.shape == (4, 4) and boxes.tolist() == [[0, 0, 2, 4], [2, 0, 4, 4]]
    np.testing.assert_array_equal(instances, np.repeat([[1, 1, 2, 2]], 4, axis=0))


def tiny_mask_dataset() -> DetectionDataset:
    """Two 8x8 images: image 0 holds A-D of :data:`LABEL`, image 1 one cell and an empty second image row."""
    boxes0, inst0 = cell_instances(LABEL, min_area=2)
    boxes1, inst1 = cell_instances(np.pad(np.ones((3, 2), bool), ((2, 3), (4, 2))), min_area=2)
    images = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    targets = pad_targets([torch.from_numpy(boxes0), torch.from_numpy(boxes1)],
                          [torch.zeros(len(boxes0), dtype=torch.long), torch.zeros(len(boxes1), dtype=torch.long)])
    return DetectionDataset(images, targets, ("cell",), "tiny", (0.5,), (0.2,),
                            torch.from_numpy(np.stack([inst0, inst1]))[:, None])


def test_coco_export_round_trips_through_pycocotools(tmp_path) -> None:
    COCO = pytest.importorskip("pycocotools.coco").COCO
    dataset = tiny_mask_dataset()
    path = tmp_path / "cells.json"
    path.write_text(json.dumps(to_coco(dataset)))  # must be JSON-serialisable
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2] and coco.loadCats(0)[0]["name"] == "cell"
    for i in range(len(dataset)):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=i + 1))
        boxes, _ = dataset.boxes_of(i)
        masks = instance_masks(dataset, i)
        assert len(annotations) == len(boxes) == len(masks)
        for ann, box, mask in zip(annotations, boxes.tolist(), masks):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            assert ann["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            assert ann["area"] == mask.sum()


def crop_and_resize_loop(mask: np.ndarray, box: list[float], size: int, ratio: int = 2) -> np.ndarray:
    """Mean of ``ratio x ratio`` bilinear samples per output cell of the box (aligned: pixel ``p`` has its centre
    at ``p + 0.5``); a sample more than one pixel outside reads 0, one within a pixel of the edge the edge."""
    H, W = mask.shape

    def read(y: float, x: float) -> float:
        if y < -1 or y > H or x < -1 or x > W:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = min(int(math.floor(y)), H - 1), min(int(math.floor(x)), W - 1)
        y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
        fy, fx = (y - y0 if y0 < H - 1 else 0.0), (x - x0 if x0 < W - 1 else 0.0)
        return ((1 - fy) * (1 - fx) * mask[y0, x0] + (1 - fy) * fx * mask[y0, x1] + fy * (1 - fx) * mask[y1, x0]
                + fy * fx * mask[y1, x1])

    bx1, by1, bx2, by2 = box
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            total = 0.0
            for a in range(ratio):
                for b in range(ratio):
                    y = by1 - 0.5 + (i + (a + 0.5) / ratio) * (by2 - by1) / size
                    x = bx1 - 0.5 + (j + (b + 0.5) / ratio) * (bx2 - bx1) / size
                    total += read(y, x)
            out[i, j] = total / ratio ** 2
    return (out >= 0.5).astype(np.float32)


def test_mask_targets_match_a_crop_and_resize_loop() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((6, 12, 10)) < 0.5
    xy = rng.uniform(-3, 9, (6, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 8, (6, 2))], axis=1)  # some partly outside the mask
    got = mask_targets(torch.from_numpy(masks), torch.from_numpy(boxes).float(), 5)
    expected = np.stack([crop_and_resize_loop(m.astype(float), b.tolist(), 5) for m, b in zip(masks, boxes)])
    np.testing.assert_array_equal(got.numpy(), expected)
    # A box on whole pixels: S px wide -> the mask's own pixels; 2S px wide -> each 2x2 block by majority.
    mask = torch.from_numpy(rng.random((1, 16, 16)) < 0.5)
    exact = mask_targets(mask, torch.tensor([[2.0, 3.0, 9.0, 10.0]]), 7)[0]
    torch.testing.assert_close(exact, mask[0, 3:10, 2:9].float())
    halved = mask_targets(mask, torch.tensor([[2.0, 2.0, 16.0, 16.0]]), 7)[0]
    blocks = mask[0, 2:16, 2:16].float().view(7, 2, 7, 2).mean(dim=(1, 3))  # (7, 7): mean of each 2x2 block
    torch.testing.assert_close(halved, (blocks >= 0.5).float())


def test_paste_masks_inverts_the_crop() -> None:
    full = paste_masks(torch.ones(1, 28, 28), torch.tensor([[3.0, 5.0, 10.0, 9.0]]), (12, 14))[0]
    expected = torch.zeros(12, 14, dtype=torch.bool)
    expected[5:9, 3:10] = True  # the pixels whose centres lie in the box
    torch.testing.assert_close(full, expected)
    # Cutting a disc out at its box and pasting it back gives the disc again (up to the 28x28 resolution).
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    disc = ((yy - 17.5) ** 2 + (xx - 21.5) ** 2) < 12 ** 2
    box = torch.tensor([[9.0, 5.0, 34.0, 30.0]])
    pasted = paste_masks(mask_targets(disc[None], box, 28), box, (40, 40))[0]
    iou = (pasted & disc).sum() / (pasted | disc).sum()
    assert iou > 0.97, float(iou)
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)


def test_mask_rcnn_outputs_and_loss() -> None:
    torch.manual_seed(0)
    model = create_model("mask_rcnn_tiny", num_classes=3, post_nms_top_k=16)
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out["mask_logits"].shape == (2, 16, 3, 28, 28) and out["mask_boxes"].shape == (2, 16, 4)
    box = out["proposals"][0, 0]
    instances = torch.zeros(2, 1, 64, 64, dtype=torch.long)
    x1, y1, x2, y2 = (int(v) for v in box.round())
    instances[0, 0, y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)] = 1
    targets = torch.tensor([[box.tolist() + [2.0]], [[0, 0, 0, 0, -1.0]]])
    loss_fn = DetectionLoss(3)
    loss = loss_fn(out, (targets, instances))
    assert torch.isfinite(loss) and loss_fn.mask_rcnn.last["mask"] > 0
    loss.backward()
    assert model.mask_out.weight.grad.abs().sum() > 0 and model.mask_head[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs instance masks"):
        loss_fn(out, targets)
    model.eval()
    for boxes, scores, labels, masks in model.predict(x, score_thresh=0.0):
        assert masks.shape == (len(boxes), 64, 64) and masks.dtype == torch.bool and len(scores) == len(labels)



def test_isbi_cell_task_is_deterministic_and_split_by_slice(shared_data) -> None:
    """The real tiles: 100 training (slices 0-24) and 20 validation (25-29) images of 128 x 128, the instance
    counts recorded in dltricks.data.cells, every box the tight box of its mask, the same on a second build."""
    from dltricks.data.cells import make_cell_instances

    task = build_task("isbi2012-cells", batch_size=8, data_dir=shared_data)
    train, val = task.train_loader.dataset, task.val_loader.dataset
    assert train.images.shape == (100, 1, 128, 128) and val.images.shape == (20, 1, 128, 128)
    assert int((train.targets[..., 4] >= 0).sum()) == 3147 and int((val.targets[..., 4] >= 0).sum()) == 642
    for i in (0, 7, 19):
        boxes, _ = val.boxes_of(i)
        for box, mask in zip(boxes.tolist(), instance_masks(val, i)):
            rows, cols = np.nonzero(mask)
            assert box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] and mask.sum() >= 10
    again = make_cell_instances(shared_data, split="val")
    assert torch.equal(again.instances, val.instances) and torch.equal(again.targets, val.targets)
    x, (targets, instances) = next(iter(task.train_loader))
    assert x.shape == (8, 1, 128, 128) and instances.shape == (8, 1, 128, 128) and targets.shape[-1] == 5
