"""``dltricks run``: the main job behind ``make run``.

Runs the evidence engine in quick mode (``dltricks verify --quick``): every implemented tip of the
catalog is tested on the MNIST images shipped inside the package (``mnist-embedded``: the official
10,000-image test split, 8,000 for training and 2,000 for validation) and on synthetic inputs, so it
needs no download and no data directory. It prints the summary table and writes ``report/index.html``
and ``report/results.json``; a few minutes on two CPU cores (cached results make reruns fast).

``dltricks run --train-demo`` keeps the earlier main job: train a small batch-norm CNN on the same data
with a progress bar, then print a per-epoch results table, the per-class validation accuracy and where
the run was saved.

Without ``--train-demo`` it calls :func:`dltricks.tips.verify.verify`, the function behind ``dltricks verify``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dltricks.commands._args import (add_old_name, data_args, data_record, log, own_formatter, print_history,
                                     recipe_from_args, run_dir_for)


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "run", help="the main job: verify the tips in quick mode on the data shipped in the package",
        formatter_class=own_formatter(formatter),
        description="Run `dltricks verify --quick` (every implemented tip on the embedded MNIST split and synthetic "
                    "inputs, offline), print the summary table and write the HTML report. With --train-demo: train a "
                    "small CNN on the embedded MNIST split with the 'quick' recipe and print a results table.")
    p.add_argument("--train-demo", action="store_true",
                   help="instead of verifying the tips, train a small CNN; the training options below (--model, "
                        "--recipe, --set, --epochs, --seed, --subset, --device) apply to it; default: off")
    p.add_argument("--model", default="speedrun_cnn", help="registered model to train")
    p.add_argument("--recipe", default="quick", help="recipe file or shipped recipe name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one recipe key, e.g. --set optim.lr=0.05 (repeatable; values are YAML 1.2); "
                        "default: none")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs; default: the recipe's")
    p.add_argument("--seed", type=int, default=None, help="random seed; default: the recipe's")
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="train on N images drawn at random, every digit keeping its share; default: all 8,000")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps; default: the recipe's (auto)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the job writes: the report folder (index.html, results.json), or with --train-demo the "
                        "run directory; default: report, or runs/MODEL-mnist-embedded-TIMESTAMP")
    add_old_name(p, "--report", dest="out")  # the report folder's earlier name
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar; default: only when stderr is a terminal")
    p.set_defaults(func=run, data="mnist-embedded", data_dir=None, overfit_batch=False)


def run(args: argparse.Namespace) -> int:
    """``dltricks run``: ``dltricks verify --quick --out DIR``, or the training demo with ``--train-demo``."""
    if args.train_demo:
        return train_demo(args)
    from dltricks.tips.verify import exit_code, verify

    out = Path(args.out) if args.out is not None else Path("report")
    return exit_code(verify(mode="quick", out=out, workers=2))  # two tips at a time on the 2-core budget


def train_demo(args: argparse.Namespace) -> int:
    """``dltricks run --train-demo``: train a small CNN on the embedded MNIST split and report it."""
    from dltricks.models._registry import model_entrypoint
    from dltricks.train import evaluate, fit, prepare
    from dltricks.train.prepare import model_kwargs_for_task
    from dltricks.train.runtime import resolve_device

    recipe = recipe_from_args(args)
    model_entrypoint(args.model)
    data = data_args(args)
    run_dir = run_dir_for(args.out, resume=False, model=args.model, data=args.data)
    device = resolve_device(recipe.train.device)
    model, task = prepare(args.model, args.data, recipe, device=device, **data)
    params = sum(p.numel() for p in model.parameters())
    log(f"dltricks run: {args.model} ({params:,} parameters) on {task.name}: {task.extra.get('train_size', '?'):,} "
        f"training / {task.extra.get('val_size', '?'):,} validation images, {recipe.train.epochs} epochs, "
        f"{recipe.optim.name} lr {recipe.optim.lr:g} {recipe.schedule.name}, device {device}")
    data_meta, data_source = data_record(args, task, recipe)
    meta = {"model": args.model, "model_kwargs": model_kwargs_for_task(args.model, task), "data": data_meta,
            "data_source": data_source}
    result = fit(model, task, recipe, run_dir=run_dir, progress=args.progress, log=log, meta=meta)
    print_history(result.history, title=f"{args.model} on {task.name}")
    per_class = evaluate(result.model, task.val_loader, task, device=device, confusion=True)["per_class_accuracy"]
    print("validation accuracy per digit: " + "  ".join(f"{c}: {a:.1%}" for c, a in zip(task.classes, per_class)))
    final = result.final
    print(f"final validation accuracy {final['val_accuracy']:.2%} (loss {final['val_loss']:.4f}) after "
          f"{final['steps']} steps in {final['time_s']:.0f} s; run saved to {run_dir} "
          f"(evaluate with `dltricks eval {run_dir}`)")
    sys.stdout.flush()
    return 0
