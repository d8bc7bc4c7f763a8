"""A distilled student against the same student on hard labels alone, paired seeds, mean ± 95 % t-interval.

Teacher: the model of a run directory (``--teacher``, e.g. a ``small_cnn`` trained by ``dltricks train``).
Student: an MLP (``--hidden``) trained with :func:`dltricks.train.fit` on the embedded MNIST split
(``--subset`` training images, ``--epochs``), once on hard labels and once distilled (Hinton et al. 2015:
``alpha`` soft-target loss at temperature ``T`` plus ``1 - alpha`` cross-entropy), with the same seed
(same initial weights, same batches). Reports the per-seed accuracies and the paired difference.

Usage::

    python benchmarks/distillation_seeds.py --teacher runs/small_cnn-mnist-embedded-X --seeds 5
    python benchmarks/distillation_seeds.py --teacher RUN --temperatures 1 2 4 8
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from dltricks.train import fit, load_recipe, prepare
from dltricks.train.runs import load_model

HYPER = {
    "epochs": 2,  # passes over the training subset
    "subset": 2000,  # training images
    "batch_size": 64,
    "lr": 0.05,  # SGD momentum 0.9, cosine schedule
    "alpha": 0.9,  # weight of the soft-target loss
}


def student_accuracy(teacher: torch.nn.Module | None, *, seed: int, hidden: list[int], temperature: float,
                     hyper: dict) -> float:
    recipe = load_recipe({"optim": {"name": "sgd", "lr": hyper["lr"]}, "schedule": {"name": "cosine"},
                          "train": {"epochs": hyper["epochs"], "batch_size": hyper["batch_size"], "seed": seed,
                                    "device": "cpu", "eval_every": hyper["epochs"]},
                          "distill": {"temperature": temperature, "alpha": hyper["alpha"]},
                          "checkpoint": {"every_epochs": 0, "keep_best": False}})
    model, task = prepare("mlp", "mnist-embedded", recipe, model_kwargs={"hidden": hidden}, subset=hyper["subset"])
    return float(fit(model, task, recipe, teacher=teacher, progress=False).final["val_accuracy"])


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (two-sided)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan")
    t95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(n, 1.96)
    return mean, t95 * statistics.stdev(values) / math.sqrt(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="run directory or weights file of the teacher")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[4.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    teacher, meta = load_model(args.teacher)
    start = time.perf_counter()
    hard = [student_accuracy(None, seed=s, hidden=args.hidden, temperature=1.0, hyper=HYPER) for s in range(args.seeds)]
    print(f"teacher {meta.get('model')} ({args.teacher}); student mlp hidden={args.hidden}; {HYPER}")
    print(f"hard labels: {[round(a, 4) for a in hard]}")
    for T in args.temperatures:
        soft = [student_accuracy(teacher, seed=s, hidden=args.hidden, temperature=T, hyper=HYPER)
                for s in range(args.seeds)]
        mean, half = t_interval([b - a for a, b in zip(hard, soft)])
        print(f"distilled T={T:g}: {[round(a, 4) for a in soft]}; paired difference {100 * mean:+.2f} "
              f"± {100 * half:.2f} points (95 % t, n={args.seeds})")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
