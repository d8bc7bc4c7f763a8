"""CIFAR-10 speedrun: time to 93 % test accuracy of the speedrun recipe vs the classic ResNet recipe, and an
ablation table of the speedrun's tricks.

(a) ``speedrun``: ``airbench_cifar`` (Jordan 2024, arXiv 2404.00498: whitening stem, three conv-pool groups
    64-256-256, 1.97 M parameters, 118 M multiply-adds per image) with recipe ``cifar10-speedrun`` (10 epochs
    of Nesterov SGD at batch 1024, one-cycle, label smoothing 0.2, Lookahead, BN shifts at 64x the learning rate
    without weight decay, reflect-crop + flip, flip TTA, bf16).
(b) ``classic``: ``resnet18_cifar`` with recipe ``cifar10-resnet`` (SGD Nesterov, cosine with warm-up, label
    smoothing 0.1, crop + flip, 30 epochs). It is far too slow on a CPU to run to 93 %: it trains for
    ``--classic-epochs`` epochs and its time to the target is read from its own measured curve (the training
    time up to the first evaluation at or above the target), or reported as "not reached in N epochs".

Same harness for both: :func:`dltricks.train.fit` with an evaluation on the test split after every epoch
(``val_accuracy``, with TTA where the recipe says so); "time to target" is the training time up to the first
evaluation >= ``--target`` (evaluations excluded). Both run in one process with the same number of threads.
Times are wall-clock; each run also records its process CPU time (``cpu_s``, training and evaluation, all
threads), which on a shared machine is far less sensitive to other jobs.

``--ablate`` trains the speedrun once as is and once with each trick removed in turn (:data:`ABLATIONS`), for
``--seeds`` seeds each (seed i is the same for every row: same data order and augmentation draws), and prints
per row the mean accuracy and training time with 95 % Student-t intervals, and the paired difference to the
full recipe with its interval.

A small budget: ``--subset`` / ``--val-subset`` (class-stratified draws) and ``--epochs`` shrink every run; the
result JSON (``--out``) keeps the arguments, torch version, threads and machine with every run's curve.

Usage::

    python benchmarks/cifar10_speedrun.py --threads 2 --data-dir ../shared/data                  # the must-hold
    python benchmarks/cifar10_speedrun.py --ablate --seeds 5 --threads 2 --data-dir ../shared/data
    python benchmarks/cifar10_speedrun.py --device cuda --target 0.94 --seeds 5 --only speedrun   # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from dltricks.evidence.stats import paired_interval
from dltricks.train import fit, load_recipe, prepare

RUNS = {"speedrun": ("airbench_cifar", "cifar10-speedrun"), "classic": ("resnet18_cifar", "cifar10-resnet")}

# Each row removes one trick: (recipe overrides, model options). "bf16" changes the speed only.
ABLATIONS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "full recipe": ([], {}),
    "- patch whitening (random frozen stem)": (["train.data_init=0"], {}),
    "- Lookahead": (["optim.lookahead_steps=0"], {}),
    "- label smoothing": (["train.label_smoothing=0"], {}),
    "- flip TTA": (["train.tta_flip=false"], {}),
    "- random flip": (["augment.hflip=false"], {}),
    "- random crop": (["augment.crop_padding=0"], {}),
    "- BN shift lr x64": (["optim.no_decay_lr_mult=1"], {}),
    "- no decay on BN (decay all)": (["optim.skip_norm_bias=false"], {}),
    "- BN momentum 0.4 (torch 0.1)": ([], {"bn_momentum": 0.1}),
    "- dirac init": ([], {"dirac_init": False}),
    "- bf16 autocast": (["train.amp=false"], {}),
}


def run_once(kind: str, *, seed: int, args: argparse.Namespace, overrides: list[str] = (),
             model_kwargs: dict[str, Any] | None = None, epochs: int | None = None, log: bool = True) -> dict:
    """One training run; returns its per-epoch curve and the time to ``args.target``."""
    model_name, recipe_name = RUNS[kind]
    sets = [f"train.seed={seed}", f"train.device={args.device}", *overrides]
    if epochs:
        sets.append(f"train.epochs={epochs}")
    recipe = load_recipe(recipe_name, sets)
    model, task = prepare(model_name, "cifar10", recipe, data_dir=args.data_dir, subset=args.subset,
                          val_subset=args.val_subset, model_kwargs=model_kwargs or {})

    def show(record: dict) -> None:
        if log:
            print(f"  [{kind} seed {seed}] epoch {record['epoch']}: test acc {record['val_accuracy']:.2%}, "
                  f"train {record['train_time_s']:.1f} s, {record['images_per_s']:.0f} img/s", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    result = fit(model, task, recipe, progress=False, on_epoch=show)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    curve, elapsed = [], 0.0
    for record in result.history:
        elapsed += record["train_time_s"]
        curve.append({"epoch": record["epoch"], "train_s": elapsed, "val_accuracy": record.get("val_accuracy")})
    hit = next((c for c in curve if (c["val_accuracy"] or 0.0) >= args.target), None)
    return {"kind": kind, "seed": seed, "overrides": list(overrides), "model_kwargs": model_kwargs or {},
            "epochs": len(curve), "accuracy": curve[-1]["val_accuracy"], "train_s": elapsed, "wall_s": wall,
            "cpu_s": cpu,
            "time_to_target_s": hit["train_s"] if hit else None, "curve": curve,
            "train_size": task.extra["train_size"], "val_size": task.extra["val_size"]}


def interval_text(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    iv = paired_interval(values)
    if iv.lo is None:
        return f"{iv.mean * scale:.2f}{unit} (n=1)"
    return f"{iv.mean * scale:.2f} +- {(iv.hi - iv.mean) * scale:.2f}{unit}"


def compare(args: argparse.Namespace) -> list[dict]:
    runs = []
    for seed in range(args.seeds):
        if args.only in (None, "speedrun"):
            runs.append(run_once("speedrun", seed=seed, args=args, overrides=args.overrides, epochs=args.epochs))
        if args.only in (None, "classic") and seed == 0:  # one classic run: it is the slow reference
            runs.append(run_once("classic", seed=seed, args=args, epochs=args.classic_epochs))
    print(f"\n{'recipe':9s} {'seeds':>5s} {'epochs':>6s} {'test acc (95% CI)':>20s} {'train s':>16s} "
          f"{'time to target':>16s}")
    for kind in RUNS:
        rows = [r for r in runs if r["kind"] == kind]
        if not rows:
            continue
        hits = [r["time_to_target_s"] for r in rows if r["time_to_target_s"] is not None]
        to_target = (f"{sum(hits) / len(hits):.1f} s ({len(hits)}/{len(rows)})" if hits
                     else f"not reached in {rows[0]['epochs']} ep")
        print(f"{kind:9s} {len(rows):5d} {rows[0]['epochs']:6d} "
              f"{interval_text([r['accuracy'] for r in rows], 100, ' %'):>20s} "
              f"{interval_text([r['train_s'] for r in rows], 1, ' s'):>16s} {to_target:>16s}")
    return runs


def ablate(args: argparse.Namespace) -> list[dict]:
    runs = []
    for seed in range(args.seeds):
        for name, (overrides, kwargs) in ABLATIONS.items():
            print(f"[{name}] seed {seed}", flush=True)
            run = run_once("speedrun", seed=seed, args=args, overrides=[*args.overrides, *overrides],
                           model_kwargs=kwargs, epochs=args.epochs, log=False)
            run["row"] = name
            runs.append(run)
            print(f"  test acc {run['accuracy']:.2%}, train {run['train_s']:.1f} s", flush=True)
    full = {r["seed"]: r for r in runs if r["row"] == "full recipe"}
    print(f"\n{'row':40s} {'test acc %':>16s} {'train s':>16s} {'acc - full (pts)':>18s} {'time - full (s)':>16s}")
    for name in ABLATIONS:
        rows = [r for r in runs if r["row"] == name]
        d_acc = [r["accuracy"] - full[r["seed"]]["accuracy"] for r in rows]
        d_time = [r["train_s"] - full[r["seed"]]["train_s"] for r in rows]
        print(f"{name:40s} {interval_text([r['accuracy'] for r in rows], 100):>16s} "
              f"{interval_text([r['train_s'] for r in rows]):>16s} {interval_text(d_acc, 100):>18s} "
              f"{interval_text(d_time):>16s}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--data-dir", default=None, help="folder or file with CIFAR-10 (cifar10-jpg.zip or tarball)")
    parser.add_argument("--target", type=float, default=0.93, help="test accuracy to reach")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (the classic runs seed 0 only)")
    parser.add_argument("--epochs", type=int, default=None, help="speedrun epochs (default: the recipe's 10)")
    parser.add_argument("--classic-epochs", type=int, default=3, help="epochs of the classic run (its curve)")
    parser.add_argument("--subset", type=int, default=None, help="training images (stratified draw; default all)")
    parser.add_argument("--val-subset", type=int, default=None, help="test images (default all 10,000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every speedrun run (repeatable), e.g. train.batch_size=256")
    parser.add_argument("--only", choices=sorted(RUNS), default=None, help="run one recipe only")
    parser.add_argument("--ablate", action="store_true", help="the ablation table instead of the comparison")
    parser.add_argument("--out", type=Path, default=None, help="write every run and the settings to this JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = {"torch": torch.__version__, "threads": args.threads, "device": args.device,
              "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    print(f"CIFAR-10 speedrun to {args.target:.1%}; torch {header['torch']}, {args.threads} thread(s), "
          f"{header['machine']}, device {args.device}, subset {args.subset or 'all'}, val {args.val_subset or 'all'}")
    t0 = time.perf_counter()
    runs = ablate(args) if args.ablate else compare(args)
    header["total_wall_s"] = time.perf_counter() - t0
    print(f"total wall time {header['total_wall_s']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**header, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
