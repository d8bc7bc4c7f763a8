"""ResNet-20 on CIFAR-10, trained by the shipped recipe and compressed with every method, measured side by side.

The acceptance run of issue 17. One process, one thread:

1. ``dltricks train resnet20 --data cifar10 --recipe cifar10-resnet`` (the shipped recipe: SGD Nesterov 0.1,
   cosine with 1 warm-up epoch, label smoothing 0.1, crop + flip, 30 epochs), its wall time recorded;
   ``--epochs`` and ``--subset`` shrink it to a budget, ``--run`` reuses a trained run instead;
2. ``dltricks.compress.compress_run`` on that run with :data:`METHODS`: accuracy on the CIFAR-10 test split,
   size on disk, parameters, non-zeros, MACs, latency at batch 1 and 32 (CPU time per call, median and IQR,
   ``torch.utils.benchmark``) for every variant in the same process;
3. the must-holds of the issue checked on the table: static int8 within 1 point of fp32, its file >= 3.5x
   smaller, its batch-1 latency lower; structured 50 % channel pruning >= 1.5x lower batch-32 latency;
   unstructured 80 % < 1.1x.

Usage::

    python benchmarks/compress_resnet20.py --data-dir ../shared/data            # the full recipe (hours on CPU)
    python benchmarks/compress_resnet20.py --epochs 1 --subset 5000 --val-subset 2000   # a small budget
    python benchmarks/compress_resnet20.py --run runs/r20                       # compress a trained run

Pruned variants in the table are not fine-tuned; ``--finetune-epochs N`` then fine-tunes the two pruned models of
the checks through ``fit`` (``dltricks.compress.prune_finetune`` for the unstructured one) and prints their
accuracy before and after (their latency is the table's: fine-tuning does not change the architecture).
The results (the table, the checks, the budget, torch version and hardware) go to ``--out``/``benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dltricks.cli import main as cli
from dltricks.compress import compress_run
from dltricks.compress.report import markdown_table

METHODS = "fp32,static-int8,dynamic-int8,prune:0.5,prune:0.8,prune:0.9,channels:0.5,onnx,onnx-int8"


def must_holds(rows: list[dict]) -> dict[str, dict]:
    """The issue's acceptance checks on one table: each with the measured value and whether it holds."""
    by = {r["method"]: r for r in rows}
    fp32, int8 = by["fp32"], by["static-int8"]
    checks = {
        "static-int8 accuracy drop (points) <= 1": 100 * (fp32["accuracy"] - int8["accuracy"]),
        "static-int8 size ratio >= 3.5": fp32["size_bytes"] / int8["size_bytes"],
        "static-int8 batch-1 speed-up > 1": fp32["latency_b1_ms"] / int8["latency_b1_ms"],
        "channels:0.5 batch-32 speed-up >= 1.5": fp32["latency_b32_ms"] / by["channels:0.5"]["latency_b32_ms"],
        "prune:0.8 batch-32 speed-up < 1.1": fp32["latency_b32_ms"] / by["prune:0.8"]["latency_b32_ms"],
    }
    bounds = {"<= 1": lambda v: v <= 1.0, ">= 3.5": lambda v: v >= 3.5, "> 1": lambda v: v > 1.0,
              ">= 1.5": lambda v: v >= 1.5, "< 1.1": lambda v: v < 1.1}
    out = {}
    for name, value in checks.items():
        bound = next(b for b in bounds if name.endswith(b))
        out[name] = {"value": round(value, 3), "holds": bounds[bound](value)}
    return out


def finetuned(run: Path, *, data_dir: str, subset: int | None, epochs: int, lr: float) -> list[dict]:
    """Accuracy of the pruned models after ``epochs`` of fine-tuning through ``fit`` (the shipped recipe at
    learning rate ``lr``, no warm-up): 50 % channels (structured), 80 % weights (one prune -> fine-tune step)."""
    from dltricks.compress import prune_channels, prune_finetune
    from dltricks.train import evaluate, fit, load_recipe, prepare
    from dltricks.train.runs import load_model

    recipe = load_recipe("cifar10-resnet", [f"train.epochs={epochs}", f"optim.lr={lr}", "schedule.warmup_epochs=0",
                                            "train.device=cpu", "checkpoint.keep_best=false"])
    model, _ = load_model(run)
    rows = []
    channels = prune_channels(model, 0.5)
    channels, task = prepare(channels, "cifar10", recipe, data_dir=data_dir, subset=subset)
    before = evaluate(channels, task.val_loader, task, device="cpu")["accuracy"]
    start = time.perf_counter()
    fit(channels, task, recipe, progress=False)
    after = evaluate(channels, task.val_loader, task, device="cpu")["accuracy"]
    rows.append({"method": "channels:0.5", "before": float(before), "after": float(after), "epochs": epochs,
                 "seconds": time.perf_counter() - start})
    start = time.perf_counter()
    _, steps = prune_finetune(model, task, recipe, [0.8])
    rows.append({"method": "prune:0.8", "before": steps[0]["before_accuracy"], "after": steps[0]["after_accuracy"],
                 "epochs": epochs, "seconds": time.perf_counter() - start})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding cifar10-jpg.zip")
    parser.add_argument("--run", default=None, help="a trained run directory: skip training")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's 30 epochs")
    parser.add_argument("--subset", type=int, default=None, help="train on N of the 50,000 training images")
    parser.add_argument("--val-subset", type=int, default=None, help="evaluate on M of the 10,000 test images")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per latency")
    parser.add_argument("--out", default="runs/compress-resnet20", help="folder for the run and the table")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="also fine-tune the pruned models (channels:0.5, prune:0.8) this many epochs")
    parser.add_argument("--finetune-lr", type=float, default=0.01, help="learning rate of that fine-tuning")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = {"epochs": args.epochs or 30, "subset": args.subset or 50000, "val_subset": args.val_subset or 10000}
    run = Path(args.run) if args.run else out / "run"
    train_s = None
    if args.run is None:
        argv = ["train", "resnet20", "--data", "cifar10", "--recipe", "cifar10-resnet", "--data-dir", args.data_dir,
                "--device", "cpu", "--out", str(run), "--no-progress"]
        argv += ["--epochs", str(args.epochs)] if args.epochs else []
        argv += ["--subset", str(args.subset)] if args.subset else []
        argv += ["--val-subset", str(args.val_subset)] if args.val_subset else []
        start = time.perf_counter()
        if cli(argv) != 0:
            raise SystemExit("training failed")
        train_s = time.perf_counter() - start
    start = time.perf_counter()
    rows, folder = compress_run(run, args.methods, out_dir=out / "compress", data_dir=args.data_dir,
                                val_subset=args.val_subset, min_run_time=args.min_time, log=print)
    compress_s = time.perf_counter() - start
    checks = must_holds(rows)
    print(markdown_table(rows))
    for name, check in checks.items():
        print(f"{'holds' if check['holds'] else 'FAILS'}: {name} (measured {check['value']})")
    tuned = []
    if args.finetune_epochs > 0:
        tuned = finetuned(run, data_dir=args.data_dir, subset=args.subset, epochs=args.finetune_epochs,
                          lr=args.finetune_lr)
        for row in tuned:
            print(f"{row['method']} fine-tuned {row['epochs']} epoch(s): accuracy {100 * row['before']:.2f}% -> "
                  f"{100 * row['after']:.2f}% ({row['seconds']:.0f} s)")
    info = {"budget": budget, "finetuned": tuned, "train_seconds": train_s, "compress_seconds": compress_s,
            "run": str(run),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": 1,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "checks": checks, "rows": rows}
    (out / "benchmark.json").write_text(json.dumps(info, indent=1))
    trained = f"training {train_s:.0f} s" if train_s is not None else f"trained run {run}"
    print(f"{trained}, compression and measurement {compress_s:.0f} s; {folder}, {out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
