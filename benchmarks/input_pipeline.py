"""Input-pipeline share (performance goal P7): the fraction of a training step spent producing the batch.

For each setting, the data set is decoded once (not timed: decode is excluded by the goal), then we time,
with the same thread count and interleaved rounds:

* ``batch``: producing one training batch with :class:`~dltricks.data.loader.TensorLoader` from the decoded
  ``uint8`` tensor (shuffled gather, float conversion, the recipe's batched augmentation, normalisation);
* ``step``: one optimizer step of the recipe's model on such a batch (forward under the recipe's autocast, the
  loss with label smoothing, backward, the optimizer's step and ``zero_grad``), as :func:`dltricks.train.fit`
  runs it.

share = batch / (batch + step), from the medians over ``--rounds`` rounds. Goal: <= 5 %.

Usage: ``python benchmarks/input_pipeline.py --threads 1 --data-dir ../shared/data``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from dltricks.train import load_recipe, prepare
from dltricks.train.optim import build_optimizer

# name: (data set, model, recipe, recipe overrides)
SETTINGS = {
    "mnist speedrun_cnn (crop 2)": ("mnist", "speedrun_cnn", "mnist-speedrun", ["augment.crop_padding=2"]),
    "cifar10 airbench_cifar (speedrun: reflect crop 2 + flip)": ("cifar10", "airbench_cifar", "cifar10-speedrun", []),
    "cifar10 resnet18_cifar (classic: crop 4 + flip)": ("cifar10", "resnet18_cifar", "cifar10-resnet", []),
}


def measure(data: str, model_name: str, recipe_name: str, overrides: list[str], *, data_dir: str | None,
            rounds: int, batch_size: int | None) -> dict[str, Any]:
    sets = ["train.device=cpu", *overrides] + ([f"train.batch_size={batch_size}"] if batch_size else [])
    recipe = load_recipe(recipe_name, sets)
    model, task = prepare(model_name, data, recipe, data_dir=data_dir)
    loader = task.train_loader
    model = model.to(memory_format=torch.channels_last)  # what train.channels_last 'auto' does for CNNs
    optimizer = build_optimizer(model, recipe.optim)
    batches = loader.iter_epoch(0)
    batch_times, step_times = [], []
    for _ in range(rounds + 1):  # the first round warms up
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16) if recipe.train.amp else nullcontext():
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.train.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        batch_times.append(t1 - t0)
        step_times.append(t2 - t1)
    batch, step = statistics.median(batch_times[1:]), statistics.median(step_times[1:])
    return {"batch_ms": 1e3 * batch, "step_ms": 1e3 * step, "share": batch / (batch + step),
            "batch_size": loader.batch_size, "augment": recipe.augment.describe()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rounds", type=int, default=10, help="timed batches per setting (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=None, help="override every recipe's batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"input-pipeline share; torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, {args.rounds} rounds")
    print(f"{'setting':58s} {'batch':>5s} {'make batch ms':>13s} {'step ms':>9s} {'share':>7s}")
    for name, (data, model_name, recipe_name, overrides) in SETTINGS.items():
        r = measure(data, model_name, recipe_name, overrides, data_dir=args.data_dir, rounds=args.rounds,
                    batch_size=args.batch_size)
        print(f"{name:58s} {r['batch_size']:5d} {r['batch_ms']:13.2f} {r['step_ms']:9.1f} {r['share']:7.2%}",
              flush=True)


if __name__ == "__main__":
    main()
