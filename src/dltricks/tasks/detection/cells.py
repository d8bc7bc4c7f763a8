"""The ``isbi2012-cells`` task: cell instances derived from the ISBI 2012 labels (:mod:`dltricks.data.cells`),
with boxes and instance masks, for box detectors and Mask R-CNN; evaluated with COCO box and mask AP."""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from typing import Any

import torch

from dltricks.config import from_dict
from dltricks.data.cells import CellConfig, make_cell_instances
from dltricks.tasks.base import Task, register_task
from dltricks.tasks.detection.mnist import detection_task

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
    return detection_task("isbi2012-cells", train, val, asdict(config), batch_size=batch_size,
                          eval_batch_size=eval_batch_size, seed=seed, rank=rank, world_size=world_size, device=device)
