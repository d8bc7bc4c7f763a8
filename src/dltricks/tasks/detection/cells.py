"""The ``isbi2012-cells`` task: cell instances derived from the ISBI 2012 labels (:mod:`dltricks.data.cells`),
with boxes and instance masks, for box detectors and Mask R-CNN; evaluated with COCO box and mask AP."""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from typing import Any

import torch

from dltricks.config import from_dict
from dltricks.data.cells import CellConfig, make_cell_instances
from dltricks.data.detection import DetectionLoader
from dltricks.tasks.base import EvalContext, Task, register_task
from dltricks.tasks.detection.losses import DetectionLoss
from dltricks.tasks.detection.mnist import detection_batch_metrics, evaluate_detection

__all__ = ["isbi2012_cells_task"]


@register_task("isbi2012-cells", help="ISBI 2012 cell instances (box + mask per cell), 128x128 tiles, slices 0-24 "
                                      "train / 25-29 val (--data-dir or DLTRICKS_DATA)", options=CellConfig)
def isbi2012_cells_task(*, batch_size: int, eval_batch_size: int | None = None,
                        data_dir: str | os.PathLike[str] | None = None, seed: int = 0, augment: Any = None,
                        rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                        **options: Any) -> Task:
    """ISBI 2012 cell instances (one class, ``cell``): the tiles of :func:`~dltricks.data.cells.make_cell_instances`
    with padded box targets and instance maps; options are the fields of :class:`~dltricks.data.cells.CellConfig`.
    No augmentation (``augment`` is ignored); ``seed`` only orders the batches."""
    config = from_dict(CellConfig, {k: v for k, v in options.items() if k in {f.name for f in fields(CellConfig)}})
    train = make_cell_instances(data_dir, split="train", config=config)
    val = make_cell_instances(data_dir, split="val", config=config)
    train_loader = DetectionLoader(train, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True, rank=rank,
                                   world_size=world_size, device=device)
    val_loader = DetectionLoader(val, batch_size=eval_batch_size or batch_size, rank=rank, world_size=world_size,
                                 device=device)
    loss = DetectionLoss(train.num_classes)

    def evaluate(model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        return evaluate_detection(model, val_loader, device=ctx.device, loss_fn=loss)

    return Task(name="isbi2012-cells", train_loader=train_loader, val_loader=val_loader,
                num_classes=train.num_classes, in_chans=1, loss=loss, batch_metrics=detection_batch_metrics,
                evaluate=evaluate, classes=train.classes, input_shape=tuple(train.images.shape[1:]),
                extra={"task_type": "detection", "config": asdict(config), "mean": train.mean, "std": train.std})
