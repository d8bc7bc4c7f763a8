"""Overhead of ``dltricks.train.fit`` over a hand-written PyTorch loop doing the same work.

Both sides train the same model (same initial weights) on the same batches (the same ``TensorLoader``,
real MNIST images from the package) with the same optimizer for one epoch, track the training loss and
accuracy per batch, and evaluate on the validation split at the end. The hand-written loop is what one
would write without a library::

    for x, y in loader.iter_epoch(epoch):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        loss_sum += loss.item() * len(y); correct += (logits.argmax(1) == y).sum().item()

``fit`` adds, per step: the NaN/Inf check, the schedule's learning rate, the task's metric function and
its bookkeeping; per call: building the optimizer, a compatibility check on two samples and seeding. The
two run interleaved (A B B A ...) ``--repeats`` times and we print the median epoch times and their
ratio; ``fit`` with a run directory (metrics files + a checkpoint at the end) is a third column.

Usage: ``python benchmarks/trainer_overhead.py [--threads 1] [--repeats 7] [--model small_cnn] [--batch-size 128]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from dltricks.models import create_model
from dltricks.train import build_task, fit, load_recipe


def hand_written(model: torch.nn.Module, task, lr: float, momentum: float) -> dict[str, float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    loss_sum = correct = count = 0.0
    for x, y in task.train_loader.iter_epoch(0):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.eval()
    val_correct = val_count = 0.0
    with torch.no_grad():
        for x, y in task.val_loader.iter_epoch(0):
            val_correct += (model(x).argmax(1) == y).sum().item()
            val_count += len(y)
    return {"train_loss": loss_sum / count, "val_accuracy": val_correct / val_count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats of each setting")
    parser.add_argument("--model", default="small_cnn", help="registered model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--subset", type=int, default=4096, help="training images per epoch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    recipe = load_recipe(None, ["train.epochs=1", f"train.batch_size={args.batch_size}", "optim.lr=0.05",
                                "optim.momentum=0.9", "checkpoint.keep_best=false",
                                "train.channels_last=false"])  # the hand-written loop is NCHW
    task = build_task("mnist-embedded", batch_size=args.batch_size, eval_batch_size=500, subset=args.subset)
    torch.manual_seed(0)
    initial = create_model(args.model, num_classes=10, in_chans=1)
    params = sum(p.numel() for p in initial.parameters())
    steps = len(task.train_loader)
    print(f"{args.model} ({params:,} params), {steps} steps of batch {args.batch_size} on mnist-embedded + "
          f"{task.extra['val_size']:,} validation images; torch {torch.__version__}, {args.threads} thread(s)")

    def run_hand() -> tuple[float, dict]:
        model = copy.deepcopy(initial)
        t = time.perf_counter()
        metrics = hand_written(model, task, 0.05, 0.9)
        return time.perf_counter() - t, metrics

    def run_fit(run_dir: bool) -> tuple[float, dict]:
        model = copy.deepcopy(initial)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result = fit(model, task, recipe, progress=False, run_dir=tmp if run_dir else None)
            elapsed = time.perf_counter() - t
        return elapsed, result.final

    settings = {"hand-written loop": lambda: run_hand(), "fit": lambda: run_fit(False),
                "fit + run dir": lambda: run_fit(True)}
    times: dict[str, list[float]] = {name: [] for name in settings}
    last: dict[str, dict] = {}
    run_hand(), run_fit(False)  # warm-up (allocator, oneDNN primitive caches)
    order = list(settings)
    for r in range(args.repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            elapsed, metrics = settings[name]()
            times[name].append(elapsed)
            last[name] = metrics
    base = statistics.median(times["hand-written loop"])
    print(f"{'setting':20s} {'median s':>9s} {'min s':>8s} {'ratio':>7s} {'per step':>10s}  train loss / val acc")
    for name, values in times.items():
        med = statistics.median(values)
        extra_ms = (med - base) / steps * 1e3
        print(f"{name:20s} {med:9.3f} {min(values):8.3f} {med / base:7.3f} {extra_ms:+8.2f}ms  "
              f"{last[name]['train_loss']:.4f} / {last[name]['val_accuracy']:.4f}")
    paired = [f / h for f, h in zip(times["fit"], times["hand-written loop"])]
    print(f"fit / hand-written: median of per-repeat ratios {statistics.median(paired):.4f} "
          f"(overhead {100 * (statistics.median(paired) - 1):+.2f} %)")


if __name__ == "__main__":
    main()
