"""Cell instances from the ISBI 2012 labels: one box and one mask per cell, for instance segmentation.

The ISBI 2012 training stack (:mod:`dltricks.data.isbi`) labels every pixel as membrane (0) or cell interior
(255). It has no instance labels, so this module derives them by fixed rules, the same on every machine:

1. **Tiles.** Each 512 x 512 slice is cut into non-overlapping ``tile x tile`` tiles (default 256: 4 per
   slice), before anything else, so every later rule sees only the tile.
2. **Instances.** The connected components of the interior class within the tile
   (``scipy.ndimage.label``), 4-connected by default: two interior pixels that touch only at a corner belong
   to different cells, because a membrane one pixel wide and diagonal leaves such corners. With
   ``connectivity=8`` they would merge (on slice 25, 103 components become 102). A cell cut by the slice's
   border or by a tile's border is kept as the part that the tile shows, like COCO's truncated objects.
3. **Scale.** The image is downscaled by ``scale`` (default 0.5, so a tile of 256 gives 128 x 128 pixels, which
   one CPU core can train on) with area averaging; the instance map is resized by nearest neighbour, so two
   cells never merge, whatever the membrane's width after resizing.
4. **Fragments.** An instance with fewer than ``min_area`` pixels after scaling (default 10, about 0.06 % of
   a tile) is dropped: slivers of cells cut by a border and specks between membranes. Its pixels count as
   background.
5. **Box and mask.** The mask is the instance's pixels; the box is their tight box in continuous pixel
   coordinates (``x2 = last column + 1``). Instances are numbered in the raster order of their first pixel
   (``ndimage.label``'s order); the one class is ``cell``.

**Split**, by slice as in the membrane task: slices 0-24 train, 25-29 validation (the tiles of one slice stay
together; neighbouring slices are nearly identical). With the defaults: 100 training and 20 validation
images of 128 x 128 with 3,147 and 642 instances (at most 45 per image; median area 145 and 102 px).

:func:`to_coco` writes a data set as a COCO instance-segmentation dict (``bbox`` ``[x, y, w, h]``, ``area`` the
mask's pixel count, ``segmentation`` as compressed RLE from ``pycocotools.mask``), which ``pycocotools.coco.COCO``
reads back (tested).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from dltricks.config import check_positive, field
from dltricks.data.detection import DetectionDataset, pad_targets
from dltricks.data.isbi import isbi_split, load_isbi
from dltricks.errors import DataError

__all__ = ["CellConfig", "cell_instances", "make_cell_instances", "to_coco", "instance_masks"]

CLASSES = ("cell",)


@dataclass
class CellConfig:
    """Options of the ``isbi2012-cells`` task (pass them as task options); see the module docstring."""

    tile: int = field(256, help="side of the tiles cut from each 512x512 slice, in slice pixels", check=check_positive)
    scale: float = field(0.5, help="resize factor applied to each tile (1 = full resolution)",
                         check=lambda v: None if 0 < v <= 1 else "a number in (0, 1]")
    connectivity: Literal[4, 8] = field(4, help="pixel connectivity of a cell (4: corners separate cells)")
    min_area: int = field(10, help="instances with fewer pixels (after scaling) are dropped", check=check_positive)
    val_size: int = field(5, help="the last val_size slices are the validation set", check=check_positive)


def cell_instances(interior: np.ndarray, *, connectivity: int = 4, scale: float = 1.0, min_area: int = 1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Instances of one tile: ``(boxes (n, 4) float32 xyxy, instance map (h, w) int16)`` from a boolean
    ``interior (H, W)`` (rules 2-5 of the module docstring); map value ``j + 1`` marks instance ``j``."""
    from scipy import ndimage

    if connectivity not in (4, 8):
        raise DataError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, _ = ndimage.label(np.asarray(interior, dtype=bool), structure=structure)  # (H, W), 0 = membrane
    if scale != 1.0:
        h, w = (max(1, round(s * scale)) for s in labels.shape)
        labels = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=(h, w),
                               mode="nearest")[0, 0].long().numpy()
    areas = np.bincount(labels.ravel())
    keep = np.nonzero(areas >= min_area)[0]
    keep = keep[keep > 0]  # raster order of the first pixel, as ndimage.label numbers them
    renumber = np.zeros(len(areas), dtype=np.int16)
    renumber[keep] = np.arange(1, len(keep) + 1)
    instances = renumber[labels]
    boxes = np.zeros((len(keep), 4), dtype=np.float32)
    for j, found in enumerate(ndimage.find_objects(instances)):
        if found is not None:
            rows, cols = found
            boxes[j] = (cols.start, rows.start, cols.stop, rows.stop)
    return boxes, instances


def _downscale_image(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    h, w = (max(1, round(s * scale)) for s in image.shape)
    x = torch.from_numpy(image)[None, None].float()  # (1, 1, H, W)
    return F.interpolate(x, size=(h, w), mode="area")[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def make_cell_instances(data_dir: str | os.PathLike[str] | None = None, *, split: str = "train",
                        config: CellConfig | None = None) -> DetectionDataset:
    """The tiles of one split (``train`` or ``val``) with their cell boxes and instance masks."""
    cfg = config or CellConfig()
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r}; expected train or val")
    data = load_isbi(data_dir)
    train_idx, val_idx = isbi_split(len(data), val_size=cfg.val_size)
    H, W = data.images.shape[-2:]
    if cfg.tile > min(H, W):
        raise DataError(f"isbi2012-cells: tile {cfg.tile} is larger than the {W}x{H} slices")
    images, instance_maps, all_boxes, all_labels = [], [], [], []
    for i in train_idx if split == "train" else val_idx:
        image, interior = data.images[i, 0].numpy(), data.masks[i, 0].numpy() == 0  # mask 1 = membrane
        for top in range(0, H - cfg.tile + 1, cfg.tile):
            for left in range(0, W - cfg.tile + 1, cfg.tile):
                window = (slice(top, top + cfg.tile), slice(left, left + cfg.tile))
                boxes, instances = cell_instances(interior[window], connectivity=cfg.connectivity, scale=cfg.scale,
                                                  min_area=cfg.min_area)
                images.append(_downscale_image(image[window], cfg.scale))
                instance_maps.append(instances)
                all_boxes.append(torch.from_numpy(boxes))
                all_labels.append(torch.zeros(len(boxes), dtype=torch.long))
    x = torch.from_numpy(np.stack(images))[:, None]  # (N, 1, h, w) uint8
    train_images = data.images[train_idx].double() / 255
    mean, std = (float(train_images.mean()),), (float(train_images.std()),)
    return DetectionDataset(x, pad_targets(all_boxes, all_labels), CLASSES, f"isbi2012-cells/{split}", mean, std,
                            torch.from_numpy(np.stack(instance_maps))[:, None])


def instance_masks(dataset: DetectionDataset, i: int) -> np.ndarray:
    """Boolean masks ``(n, H, W)`` of image ``i``'s instances, in target-row order."""
    if dataset.instances is None:
        raise DataError(f"data set {dataset.name} has no instance masks")
    n = len(dataset.boxes_of(i)[0])
    ids = dataset.instances[i, 0].numpy()
    return ids[None] == np.arange(1, n + 1)[:, None, None]


def rle_encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE (``counts`` as a str, JSON-ready) of boolean masks ``(n, H, W)``."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # wants (H, W, n)
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def to_coco(dataset: DetectionDataset) -> dict[str, Any]:
    """A COCO instance-segmentation dict of ``dataset`` (images ``1..N``, categories from 0, see the module
    docstring); ``json.dump`` writes it."""
    H, W = dataset.images.shape[-2:]
    images, annotations = [], []
    for i in range(len(dataset)):
        images.append({"id": i + 1, "width": int(W), "height": int(H), "file_name": f"{dataset.name}/{i}"})
        boxes, labels = dataset.boxes_of(i)
        masks = instance_masks(dataset, i)
        for box, label, mask, rle in zip(boxes.tolist(), labels.tolist(), masks, rle_encode(masks)):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum()), "iscrowd": 0,
                                "segmentation": rle})
    categories = [{"id": k, "name": name} for k, name in enumerate(dataset.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}
