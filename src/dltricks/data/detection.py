"""Detection data: images with a variable number of labelled boxes, batched as padded tensors, and the
MNIST-detection scenes (real MNIST digits pasted on a larger canvas), the sanity task of docs/detection.md.

**Batch format** (what detection tasks, losses and the evaluation read). A batch is ``(images, targets)``:
``images`` ``(B, C, H, W)`` float (normalised), ``targets`` ``(B, M, 5)`` float rows ``(x1, y1, x2, y2, label)``
in pixels of the image (xyxy, continuous coordinates), padded to ``M`` rows per image with ``label = -1``.
A padded tensor keeps the trainer's one batch contract (tensors moved to the device as they are).
A data set with instance masks (``DetectionDataset.instances``, for Mask R-CNN) yields ``(images, (targets,
instances))`` instead: ``instances`` ``(B, 1, H, W)`` int64, pixel value ``j + 1`` on the mask of target row
``j``, 0 elsewhere (masks do not overlap; :func:`split_batch` takes either form apart).

**MNIST-detection scenes** (:func:`make_mnist_scenes`). Scene ``i`` of a split is a pure function of
``(seed, split, i)``; its generator draws:

* the number of digits, uniform in ``[min_digits, max_digits]``;
* for each digit, an image of the split's MNIST source (the 8,000 ``mnist-embedded`` training images for the
  ``train`` scenes, the 2,000 held-out ones for ``val``: no digit image is shared between the two), a side
  length uniform in ``[min_size, max_size]`` pixels (the 28 x 28 digit is resized bilinearly), and a position
  uniform over the canvas; a position whose box overlaps an earlier digit's box with IoU above
  ``max_overlap`` is redrawn (up to 20 tries, then the digit is dropped);
* the canvas is the pixel-wise maximum of the pasted digits on black.

The box of a digit is the tight box of its resized pixels with intensity at least ``box_threshold`` (of 255):
the ink, not the 28 x 28 frame with its empty margin; the label is the digit's class. With ``masks=True``
the same ink pixels are the digit's instance mask (where two digits' ink overlaps, the later one keeps the
pixel). Scenes are made once when the task is built (about 1 s for 4,000 scenes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dltricks.data.base import ArrayDataset
from dltricks.data.loader import derive_seed
from dltricks.errors import DataError

__all__ = ["DetectionDataset", "DetectionLoader", "MnistSceneConfig", "make_mnist_scenes", "pad_targets",
           "split_batch"]

_SPLIT_IDS = {"train": 0, "val": 1}


def pad_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """``(N, M, 5)`` padded targets from per-image ``(n_i, 4)`` boxes and ``(n_i,)`` labels (label -1 = padding)."""
    most = max((len(b) for b in boxes), default=0)
    out = torch.zeros(len(boxes), max(most, 1), 5)
    out[..., 4] = -1
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        out[i, :len(b), :4] = b
        out[i, :len(b), 4] = lab.to(out.dtype)
    return out


def split_batch(y: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(targets (B, M, 5), instances (B, 1, H, W) or None)`` from a detection batch's ``y``."""
    if isinstance(y, (tuple, list)):
        return y[0], (y[1] if len(y) > 1 else None)
    return y, None


@dataclass
class DetectionDataset:
    """Images ``(N, C, H, W)`` uint8 and padded targets ``(N, M, 5)`` (see the module docstring); optional
    ``instances`` ``(N, 1, H, W)`` int16 (pixel value ``j + 1`` on the mask of target row ``j``).

    Construction checks every box (finite, ``x2 > x1``, ``y2 > y1``, inside the image) and every label
    (an integer in ``[0, num_classes)``) and raises one :class:`DataError` line naming the first bad one.
    """

    images: torch.Tensor
    targets: torch.Tensor
    classes: tuple[str, ...]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    instances: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._check()
        if self.instances is not None:
            shape = (len(self.images), 1, *self.images.shape[-2:])
            if tuple(self.instances.shape) != shape or self.instances.is_floating_point():
                raise DataError(f"data set {self.name}: instances must be an integer map of shape {shape}, got "
                                f"{self.instances.dtype} {tuple(self.instances.shape)}")

    def _check(self) -> None:
        images, targets, name = self.images, self.targets, self.name
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"data set {name}: images must be uint8 (N, C, H, W), got {images.dtype} "
                            f"{tuple(images.shape)}")
        if targets.dim() != 3 or targets.shape[-1] != 5 or len(targets) != len(images):
            raise DataError(f"data set {name}: targets must be (N, M, 5) rows (x1, y1, x2, y2, label) for "
                            f"{len(images)} images, got {tuple(targets.shape)}")
        H, W = images.shape[-2:]
        if len(images) == 0 or H == 0 or W == 0:
            raise DataError(f"data set {name} is empty: images of shape {tuple(images.shape)} (need at least one "
                            "image of at least 1x1 pixels)")
        real = targets[..., 4] >= 0
        boxes, labels = targets[..., :4], targets[..., 4]
        problems = [
            (~torch.isfinite(targets).all(dim=-1), "a non-finite coordinate"),
            (real & ((boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])), "x2 <= x1 or y2 <= y1"),
            (real & ((boxes[..., :2] < 0).any(-1) | (boxes[..., 2] > W) | (boxes[..., 3] > H)),
             f"a corner outside the {W}x{H} image"),
            ((labels != labels.round()) | (labels < -1) | (labels >= len(self.classes)),
             f"a label outside [0, {len(self.classes)}) (num_classes {len(self.classes)})"),
        ]
        for bad, what in problems:
            if bad.any():
                i, j = (int(v) for v in bad.nonzero()[0])
                raise DataError(f"data set {name}: image {i}, box {j} has {what}: {targets[i, j].tolist()}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def boxes_of(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(n, 4)`` and labels ``(n,)`` (int64) of image ``i``, padding removed."""
        rows = self.targets[i][self.targets[i, :, 4] >= 0]
        return rows[:, :4], rows[:, 4].long()


class DetectionLoader:
    """Batches of a :class:`DetectionDataset` (the loader protocol of :mod:`dltricks.tasks.base`).

    The order of epoch ``e`` is ``randperm`` from a generator seeded with ``derive_seed(seed, e)`` (or the
    data order without shuffling); ranks take every ``world_size``-th batch. No augmentation: a flip turns a
    digit into another shape.
    """

    def __init__(self, dataset: DetectionDataset, *, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu") -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.targets = dataset.targets.to(self.device)
        self.instances = None if dataset.instances is None else dataset.instances.to(self.device)
        C = dataset.images.shape[1]
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, C, 1, 1)
        self.std = torch.tensor(dataset.std, device=self.device).view(1, C, 1, 1)
        full = len(dataset) // batch_size if drop_last else -(-len(dataset) // batch_size)
        self._batches = len(range(rank, full, world_size))
        self.num_samples = min(self._batches * batch_size, len(dataset))

    def __len__(self) -> int:
        return self._batches

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.dataset))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(len(self.dataset), generator=generator)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, Any]]:
        order = self.order(epoch).to(self.device)
        for b in range(start_batch, self._batches):
            global_batch = self.rank + b * self.world_size
            index = order[global_batch * self.batch_size:(global_batch + 1) * self.batch_size]
            images = self.images.index_select(0, index).float().div_(255)
            targets = self.targets.index_select(0, index)
            if self.instances is None:
                yield (images - self.mean) / self.std, targets
            else:
                yield (images - self.mean) / self.std, (targets, self.instances.index_select(0, index).long())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        return self.iter_epoch(0)


@dataclass(frozen=True)
class MnistSceneConfig:
    """Options of the MNIST-detection scenes (``--data-opt KEY=VALUE``); see :func:`make_mnist_scenes`."""

    canvas: int = 64  # side of the square canvas (pixels)
    min_digits: int = 1
    max_digits: int = 3
    min_size: int = 16  # side of a pasted digit (pixels, before cropping to its ink)
    max_size: int = 28
    max_overlap: float = 0.1  # largest IoU between two digit boxes
    box_threshold: int = 64  # ink threshold (of 255) of the tight box
    train_scenes: int = 4000
    val_scenes: int = 500
    masks: bool = False  # also give each digit's ink mask (pixels >= box_threshold), for Mask R-CNN

    def check(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise DataError(f"mnist-detection: need 1 <= min_digits <= max_digits, got {self.min_digits}, "
                            f"{self.max_digits}")
        if not 4 <= self.min_size <= self.max_size <= self.canvas:
            raise DataError(f"mnist-detection: need 4 <= min_size <= max_size <= canvas, got {self.min_size}, "
                            f"{self.max_size}, {self.canvas}")
        if self.train_scenes < 1 or self.val_scenes < 1:
            raise DataError("mnist-detection: train_scenes and val_scenes must be >= 1")


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _paste_scene(digits: ArrayDataset, rng: np.random.Generator, cfg: MnistSceneConfig
                 ) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int], np.ndarray]:
    canvas = np.zeros((cfg.canvas, cfg.canvas), dtype=np.uint8)
    instances = np.zeros((cfg.canvas, cfg.canvas), dtype=np.int16)  # j + 1 on digit j's ink, a later digit on top
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(cfg.min_digits, cfg.max_digits + 1))):
        k = int(rng.integers(len(digits)))
        side = int(rng.integers(cfg.min_size, cfg.max_size + 1))
        digit = F.interpolate(digits.images[k:k + 1].float(), size=(side, side), mode="bilinear",
                              align_corners=False)[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
        rows, cols = np.nonzero(digit >= cfg.box_threshold)
        if len(rows) == 0:
            continue
        ink = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)  # xyxy in the digit
        for _try in range(20):
            x0 = int(rng.integers(0, cfg.canvas - side + 1))
            y0 = int(rng.integers(0, cfg.canvas - side + 1))
            box = (x0 + ink[0], y0 + ink[1], x0 + ink[2], y0 + ink[3])
            if all(_iou(box, other) <= cfg.max_overlap for other in boxes):
                np.maximum(canvas[y0:y0 + side, x0:x0 + side], digit, out=canvas[y0:y0 + side, x0:x0 + side])
                region = instances[y0:y0 + side, x0:x0 + side]
                region[digit >= cfg.box_threshold] = len(boxes) + 1
                boxes.append(box)
                labels.append(int(digits.labels[k]))
                break
    return canvas, boxes, labels, instances


def make_mnist_scenes(digits: ArrayDataset, num_scenes: int, *, split: str, seed: int = 0,
                      config: MnistSceneConfig | None = None) -> DetectionDataset:
    """``num_scenes`` MNIST-detection scenes built from ``digits`` (the module docstring gives the rules)."""
    cfg = config or MnistSceneConfig()
    cfg.check()
    if split not in _SPLIT_IDS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(_SPLIT_IDS)}")
    images = np.zeros((num_scenes, 1, cfg.canvas, cfg.canvas), dtype=np.uint8)
    all_boxes, all_labels = [], []
    instances = np.zeros((num_scenes, 1, cfg.canvas, cfg.canvas), dtype=np.int16) if cfg.masks else None
    for i in range(num_scenes):
        rng = np.random.default_rng(derive_seed(seed, _SPLIT_IDS[split], i))
        canvas, boxes, labels, scene_instances = _paste_scene(digits, rng, cfg)
        images[i, 0] = canvas
        if instances is not None:
            instances[i, 0] = scene_instances
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.long))
    return DetectionDataset(torch.from_numpy(images), pad_targets(all_boxes, all_labels), digits.classes,
                            f"mnist-detection/{split}", digits.mean, digits.std,
                            None if instances is None else torch.from_numpy(instances))
