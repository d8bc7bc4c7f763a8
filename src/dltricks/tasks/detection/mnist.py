"""The ``mnist-detection`` task: MNIST-detection scenes (:mod:`dltricks.data.detection`) with the detection
objective (:class:`~dltricks.tasks.detection.losses.DetectionLoss`) and the COCO evaluation."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import torch

from dltricks.config import from_dict
from dltricks.data.detection import DetectionLoader, MnistSceneConfig, make_mnist_scenes, split_batch
from dltricks.data.mnist import load_mnist_embedded
from dltricks.tasks.base import EvalContext, Task, register_task
from dltricks.tasks.detection.losses import DetectionLoss, split_targets
from dltricks.tasks.detection.metrics import coco_evaluate, voc_ap50

__all__ = ["mnist_detection_task", "evaluate_detection", "detection_batch_metrics"]


def detection_batch_metrics(output: Any, targets: Any) -> dict[str, float]:
    """Per-batch sums for the training log: the number of images (the loss is added by ``fit``)."""
    return {"count": float(split_batch(targets)[0].shape[0])}


@torch.no_grad()
def evaluate_detection(model: torch.nn.Module, loader: Any, *, device: torch.device | str = "cpu",
                       loss_fn: Any = None, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                       max_detections: int = 100) -> dict[str, float]:
    """COCO metrics (``map``, ``ap50``, ``ap75``; AP by size where the data has such objects), VOC ``voc_ap50``
    and the mean ``loss`` of ``model`` over ``loader``'s batches. A model that predicts masks (Mask R-CNN) on
    data with instance masks also gets COCO mask AP: the same keys with a ``mask_`` prefix."""
    model.eval()
    predictions, ground_truth, loss_sum, images = [], [], 0.0, 0
    postprocess = model.postprocess
    for x, y in loader.iter_epoch(0):
        output = model(x.to(device))
        y = tuple(t.to(device) for t in y) if isinstance(y, (tuple, list)) else y.to(device)
        targets, instances = split_batch(y)
        if loss_fn is not None:
            loss_sum += float(loss_fn(output, y)) * len(targets)
        images += len(targets)
        predictions += [tuple(t.cpu() for t in det) for det in postprocess(
            output, score_thresh=score_thresh, nms_thresh=nms_thresh, max_detections=max_detections)]
        for i, (b, lab) in enumerate(split_targets(targets)):
            if instances is None:
                ground_truth.append((b.cpu(), lab.cpu()))
            else:  # value j + 1 of the instance map is the mask of target row j
                ids = torch.arange(1, len(b) + 1, device=instances.device)[:, None, None]
                ground_truth.append((b.cpu(), lab.cpu(), (instances[i, 0][None] == ids).cpu()))
    metrics = {k: v for k, v in coco_evaluate(predictions, ground_truth).items() if v != -1.0}
    metrics["voc_ap50"] = voc_ap50(predictions, ground_truth)
    if predictions and len(predictions[0]) > 3 and len(ground_truth[0]) > 2:
        segm = coco_evaluate(predictions, ground_truth, iou_type="segm")
        metrics.update({f"mask_{k}": v for k, v in segm.items() if v != -1.0 and k != "images"})
    if loss_fn is not None:
        metrics["loss"] = loss_sum / max(images, 1)
    return metrics


@register_task("mnist-detection", help="MNIST digits pasted on 64x64 canvases with their boxes (detection, offline)",
               options=MnistSceneConfig)
def mnist_detection_task(*, batch_size: int, eval_batch_size: int | None = None, seed: int = 0, augment: Any = None,
                         rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                         data_dir: Any = None, **options: Any) -> Task:
    """MNIST digits pasted on 64x64 canvases with their boxes (detection, offline).

    Train scenes are built from the 8,000 ``mnist-embedded`` training digits, validation scenes from the
    2,000 held-out ones; options are the fields of :class:`~dltricks.data.detection.MnistSceneConfig`. The
    scene seed is fixed (0) so every run sees the same scenes; ``seed`` only orders the batches.
    """
    config = from_dict(MnistSceneConfig, {k: v for k, v in options.items() if k in {f.name for f in
                                                                                   fields(MnistSceneConfig)}})
    config.check()
    train = make_mnist_scenes(load_mnist_embedded("train"), config.train_scenes, split="train", config=config)
    val = make_mnist_scenes(load_mnist_embedded("val"), config.val_scenes, split="val", config=config)
    return detection_task("mnist-detection", train, val, asdict(config), batch_size=batch_size,
                          eval_batch_size=eval_batch_size, seed=seed, rank=rank, world_size=world_size, device=device)


def detection_task(name: str, train: Any, val: Any, config: dict[str, Any], *, batch_size: int,
                   eval_batch_size: int | None, seed: int, rank: int, world_size: int,
                   device: str | torch.device) -> Task:
    """The :class:`Task` of a detection data set: shuffled training batches (last partial batch dropped), the
    validation loader, :class:`DetectionLoss`, and COCO evaluation (:func:`evaluate_detection`) every period."""
    train_loader = DetectionLoader(train, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True, rank=rank,
                                   world_size=world_size, device=device)
    val_loader = DetectionLoader(val, batch_size=eval_batch_size or batch_size, rank=rank, world_size=world_size,
                                 device=device)
    loss = DetectionLoss(train.num_classes)

    def evaluate(model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        return evaluate_detection(model, val_loader, device=ctx.device, loss_fn=loss)

    return Task(name=name, train_loader=train_loader, val_loader=val_loader, num_classes=train.num_classes,
                in_chans=int(train.images.shape[1]), loss=loss, batch_metrics=detection_batch_metrics,
                evaluate=evaluate, classes=train.classes, input_shape=tuple(train.images.shape[1:]),
                extra={"task_type": "detection", "config": config, "mean": train.mean, "std": train.std})
