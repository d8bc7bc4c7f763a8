"""Mask R-CNN (and the box detectors) on the ISBI 2012 cell instances through ``fit`` (docs/detection.md,
"Cell instances").

Usage: ``python benchmarks/detection_cells.py [model] [epochs] [seed]`` (defaults: mask_rcnn_tiny, 15, 0), with
``DLTRICKS_DATA`` pointing at the folder that holds ``isbi2012-membrane/``. One epoch = 100 training tiles of
128 x 128 (slices 0-24) = 12 steps of 8. Prints the final validation metrics (the 20 tiles of slices 25-29:
COCO box AP, and mask AP for Mask R-CNN) and the wall and CPU time; run with ``OMP_NUM_THREADS`` set to the
cores you give it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch

from dltricks import create_model
from dltricks.tasks import build_task
from dltricks.train import fit

RECIPE = {
    "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},  # lr: peak, per step
    "schedule": {"name": "cosine", "warmup_steps": 20},
    "train": {"epochs": 15, "batch_size": 8, "eval_batch_size": 10, "grad_clip": 10.0, "device": "cpu", "seed": 0},
}


def main() -> None:
    model_name = sys.argv[1] if len(sys.argv) > 1 else "mask_rcnn_tiny"
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    recipe = {**RECIPE, "train": {**RECIPE["train"], "epochs": epochs, "seed": seed, "eval_every": epochs}}
    torch.manual_seed(seed)
    task = build_task("isbi2012-cells", batch_size=8, eval_batch_size=10, seed=seed)
    model = create_model(model_name, num_classes=task.num_classes, in_chans=1)
    # Record the loss terms of every training step (DetectionLoss keeps the last call's terms per family).
    inner, terms = task.loss, []
    family = {"mask": "mask_rcnn", "faster": "faster_rcnn", "fcos": "fcos",
              "retinanet": "retinanet"}[model_name.split("_")[0]]

    def loss(output, y, **kwargs):
        value = inner(output, y, **kwargs)
        if torch.is_grad_enabled():
            terms.append(dict(getattr(inner, family).last))
        return value

    task = dataclasses.replace(task, loss=loss)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fit(model, task, recipe, log=print)
    per_epoch = len(task.train_loader)
    for e in range(0, len(terms), per_epoch):
        chunk = terms[e:e + per_epoch]
        means = {k: round(sum(t[k] for t in chunk) / len(chunk), 3) for k in chunk[0]}
        print(f"epoch {e // per_epoch + 1} mean loss terms", means)
    final = {k: v for k, v in result.final.items() if k.startswith("val_")}
    print(json.dumps({"model": model_name, "epochs": epochs, "seed": seed, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "time_s": round(time.perf_counter() - t0, 1),
                      "cpu_s": round(time.process_time() - c0, 1), **final}))


if __name__ == "__main__":
    main()
