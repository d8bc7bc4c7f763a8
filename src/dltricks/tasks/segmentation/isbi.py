"""The ``isbi2012-membrane`` task: the ISBI 2012 data (:mod:`dltricks.data.isbi`) with the segmentation
losses, metrics and U-Net's weight maps of :mod:`dltricks.tasks.segmentation`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from functools import partial
from typing import Any

import torch

from dltricks.config import from_dict
from dltricks.data.isbi import (MAX_EVAL_SLICES, ISBIConfig, PairAugmenter, SegmentationLoader, find_isbi,
                                isbi_split, load_isbi)
from dltricks.errors import ConfigError
from dltricks.tasks.base import EvalContext, Task, register_task
from dltricks.tasks.segmentation.evaluate import evaluate_segmentation
from dltricks.tasks.segmentation.losses import SegmentationLoss
from dltricks.tasks.segmentation.metrics import SegmentationMetrics
from dltricks.tasks.segmentation.weights import unet_weight_maps

__all__ = ["isbi2012_membrane_task"]

# --- task ------------------------------------------------------------------------------------------------

_CONFIG_KEYS = {f.name for f in fields(ISBIConfig)}


def _parse_config(augment: Any, options: Mapping[str, Any]) -> ISBIConfig:
    values: dict[str, Any] = {}
    # ``augment`` may carry ISBI options (a mapping or an ISBIConfig); the classification AugmentConfig of a
    # training recipe (crop padding, hflip, mixup...) does not apply to image/mask pairs and is ignored.
    if isinstance(augment, ISBIConfig):
        values.update({f.name: getattr(augment, f.name) for f in fields(ISBIConfig)})
    elif isinstance(augment, Mapping):
        values.update(augment)
    elif augment is False or augment == "none":
        values.update(flip=False, rot90=False, elastic=False)
    values.update({k: v for k, v in options.items() if k in _CONFIG_KEYS})
    return from_dict(ISBIConfig, values)


def _draw(index: Any, size: int, seed: int) -> tuple[list[int], dict[str, Any]]:
    """``size`` of the slice indices ``index`` drawn without replacement (seeded), in stack order, with the
    record of the draw."""
    index = [int(i) for i in index]
    generator = torch.Generator().manual_seed(seed)
    chosen = sorted(index[int(k)] for k in torch.randperm(len(index), generator=generator)[:min(size, len(index))])
    return chosen, {"size": len(chosen), "of": len(index), "seed": seed, "slices": chosen}


@register_task("isbi2012-membrane", help="ISBI 2012 EM membrane segmentation: 30 slices, 25 train / 5 val "
                                         "(--data-dir or DLTRICKS_DATA)", options=ISBIConfig)
def isbi2012_membrane_task(*, batch_size: int, eval_batch_size: int | None = None,
                           data_dir: str | os.PathLike[str] | None = None, seed: int = 0, augment: Any = None,
                           rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                           **options: Any) -> Task:
    """ISBI 2012 EM membrane segmentation: 30 slices, 25 train / 5 val (--data-dir or DLTRICKS_DATA).

    Options: the fields of :class:`ISBIConfig` (``crop_size``, ``elastic``, ``loss``, ``fold``...), ``subset`` /
    ``val_subset`` (N slices drawn at random, without replacement, by a permutation seeded with ``subset_seed``,
    default 0, kept in stack order; recorded in ``task.extra["subset"]``). The model must output one logit per
    pixel (``num_classes=1``) for a 1-channel input. ``augment`` may be an :class:`ISBIConfig` or a mapping of
    its fields; the classification :class:`~dltricks.data.augment.AugmentConfig` of a training recipe is ignored.
    """
    config = _parse_config(augment, options)
    data = load_isbi(data_dir)
    train_idx, val_idx = isbi_split(len(data), val_size=config.val_size, fold=config.fold,
                                    num_folds=config.num_folds)
    # ``subset`` / ``val_subset`` (quick runs): N training / validation slices drawn at random. The slices are
    # consecutive sections of one volume, so the first N would all come from one end of it.
    subset_seed = options.get("subset_seed", 0)
    if subset_seed is None:
        subset_seed = 0
    if not isinstance(subset_seed, int) or isinstance(subset_seed, bool):
        raise ConfigError(f"subset_seed: got {subset_seed!r}, expected an integer")
    drawn: dict[str, Any] = {}
    for key in ("subset", "val_subset"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{key}: got {value!r}, expected a positive number of slices")
    if options.get("subset") is not None:
        train_idx, drawn["subset"] = _draw(train_idx, options["subset"], subset_seed)
    if options.get("val_subset") is not None:
        val_idx, drawn["val_subset"] = _draw(val_idx, options["val_subset"], subset_seed)
    train, val = data.subset(train_idx, "isbi2012-membrane/train"), data.subset(val_idx, "isbi2012-membrane/val")
    loss_weights = None
    if config.border_weight > 0 or config.balance_classes:
        if config.loss == "dice":
            raise ConfigError("border_weight / balance_classes weight the cross-entropy, but loss is 'dice'; "
                              "expected loss 'bce' or 'bce+dice'")
        loss_weights = partial(unet_weight_maps, train.masks, w0=config.border_weight, sigma=config.border_sigma,
                               balance_classes=config.balance_classes)
    mean, std = train.stats()
    H, W = data.images.shape[-2:]
    crop = config.crop_size
    crop_area = min(crop or H, H) * min(crop or W, W)
    samples = config.samples_per_epoch or len(train) * max(1, round(H * W / crop_area))
    train_loader = SegmentationLoader(train, batch_size=batch_size, mean=mean, std=std, augment=PairAugmenter(config),
                                      samples_per_epoch=samples, seed=seed, rank=rank, world_size=world_size,
                                      device=device, loss_weights=loss_weights)
    # Evaluation batches are whole slices; more than a few at once only costs memory (`dltricks eval` asks
    # for 500), so they are capped at MAX_EVAL_SLICES.
    eval_batch = min(eval_batch_size or 1, MAX_EVAL_SLICES)
    val_loader = SegmentationLoader(val, batch_size=eval_batch, mean=mean, std=std, seed=seed, rank=rank,
                                    world_size=world_size, device=device)
    # The training slices whole and unaugmented, for `dltricks eval --split train` (how well the labels
    # the model learnt from are fitted).
    train_eval_loader = SegmentationLoader(train, batch_size=eval_batch, mean=mean, std=std, seed=seed,
                                           rank=rank, world_size=world_size, device=device)
    loss = SegmentationLoss(config.loss)

    def evaluate(model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        # Every evaluation: the held-out slices whole, in float32 (val_dice, val_isbi_pixel_error, val_loss...).
        # The end-of-run one adds sliding windows and flips as configured (val_final_dice...).
        metrics = evaluate_segmentation(model, val_loader, loss_fn=loss, device=ctx.device)
        if ctx.last and (config.final_window is not None or config.final_tta):
            final = evaluate_segmentation(model, val_loader, window=config.final_window,
                                          overlap=config.final_overlap, tta=config.final_tta, device=ctx.device)
            metrics.update({f"final_{k}": v for k, v in final.items() if k not in ("images", "isbi_threshold")})
        return metrics

    return Task(
        name="isbi2012-membrane",
        train_loader=train_loader,
        val_loader=val_loader,
        num_classes=1,
        in_chans=int(data.images.shape[1]),
        loss=loss,
        batch_metrics=SegmentationMetrics(loss),
        evaluate=evaluate,
        classes=("membrane",),
        input_shape=(int(data.images.shape[1]), min(crop or H, H), min(crop or W, W)),
        extra={"mean": mean, "std": std, "train_slices": train.ids, "val_slices": val.ids, "foreground": "membrane",
               "source": str(find_isbi(data_dir)),
               "label_convention": "label PNG 0 = membrane (foreground), 255 = cell interior",
               "config": config, "task_type": "segmentation", "train_eval_loader": train_eval_loader, **drawn},
    )
