"""RetinaNet / FCOS / Faster R-CNN on the MNIST-detection scenes through ``fit`` (docs/detection.md, "Results").

Usage: ``python benchmarks/detection_mnist.py [model] [epochs] [seed]`` (defaults: retinanet_tiny, 10, 0).
One epoch = 4,000 scenes of 64 x 64 = 125 steps of 32. Prints the final validation metrics (500 held-out
scenes built from digits never seen in training) and the wall time; run with ``OMP_NUM_THREADS`` set to the
cores you give it.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from dltricks import create_model
from dltricks.tasks import build_task
from dltricks.train import fit

RECIPE = {
    "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},  # lr: peak, per step
    "schedule": {"name": "cosine", "warmup_steps": 50},
    "train": {"epochs": 10, "batch_size": 32, "eval_batch_size": 100, "eval_every": 5, "grad_clip": 10.0,
              "device": "cpu", "seed": 0},
}


def main() -> None:
    model_name = sys.argv[1] if len(sys.argv) > 1 else "retinanet_tiny"
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    recipe = {**RECIPE, "train": {**RECIPE["train"], "epochs": epochs, "seed": seed}}
    torch.manual_seed(seed)
    task = build_task("mnist-detection", batch_size=32, eval_batch_size=100, seed=seed)
    model = create_model(model_name, num_classes=task.num_classes, in_chans=1)
    t0 = time.perf_counter()
    result = fit(model, task, recipe, log=print)
    final = {k: v for k, v in result.final.items() if k.startswith("val_")}
    print(json.dumps({"model": model_name, "epochs": epochs, "seed": seed, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "time_s": round(time.perf_counter() - t0, 1), **final}))


if __name__ == "__main__":
    main()
