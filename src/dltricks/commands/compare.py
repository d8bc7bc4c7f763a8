"""``dltricks compare MODEL... --data D``: train (or evaluate) several models on the same data and write a
leaderboard of accuracy, parameters, MACs, latency, throughput and peak memory, with plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dltricks.commands._args import (add_common_data_args, add_old_name, data_args, data_record, log,
                                     own_formatter, recipe_from_args, resolve_checkpoint)

EPILOG = """\
examples:
  dltricks compare small_cnn lenet5 mlp --data mnist-embedded --epochs 2
  dltricks compare resnet20 mobilenet_v2 --data cifar10 --data-dir ../shared/data --recipe cifar10-resnet --subset 5000
  dltricks compare resnet18 resnet50 --data cifar10 --eval-only --weights resnet18=runs/r18 --weights resnet50=runs/r50

Writes to --out: leaderboard.md, leaderboard.csv, leaderboard.json, accuracy_vs_latency.png,
macs_vs_latency.png (pairs whose MACs order and latency order disagree are joined in red),
params_vs_memory.png, and one training run directory per model.
"""


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "compare", help="train or evaluate several models and write a leaderboard with plots",
        formatter_class=own_formatter(formatter), epilog=EPILOG,
        description="Train each MODEL on the same data with the same recipe (or evaluate given weights), then "
                    "measure all of them side by side on this machine: accuracy, ECE, parameters, MACs, latency, "
                    "throughput and peak memory. Writes Markdown/CSV/JSON leaderboards and plots.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered model names (two or more to compare)")
    add_common_data_args(p, data_required=True)
    p.add_argument("--recipe", default=None, metavar="R",
                   help="recipe YAML file or shipped recipe name; default: the built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one recipe key, e.g. --set optim.lr=0.05 (repeatable; values are YAML 1.2); "
                        "default: none")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per model (overrides train.epochs); default: the recipe's")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for every model (overrides train.seed); default: the recipe's")
    p.add_argument("--eval-only", action="store_true",
                   help="do not train: evaluate (with --weights when given); default: train")
    p.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                   help="weights of a model for --eval-only: a run directory or a .safetensors file (repeatable); "
                        "default: none (an untrained model, with a warning)")
    p.add_argument("--batch-size", dest="batch", type=int, default=None, metavar="N",
                   help="batch size of the throughput and memory measurements; default: the recipe's batch size")
    add_old_name(p, "--batch", dest="batch", type=int, metavar="N")
    p.add_argument("--quick", action="store_true", help="short timings (smoke runs); default: off")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder; default: runs/compare-DATA-TIMESTAMP")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show training progress bars; default: only when stderr is a terminal")
    p.add_argument("--wide", action="store_true",
                   help="show every leaderboard column, however wide the table gets; default: leave out the least "
                        "important columns that do not fit the terminal (all are in leaderboard.md/.csv/.json)")
    p.set_defaults(func=run)


# How much a leaderboard column matters when the terminal is too narrow for all (0: always shown; the highest
# rank is left out first).
_RANKS = {"model": 0, "accuracy": 0, "dice": 0, "latency_ms": 1, "params": 2, "macs": 3, "throughput": 4,
          "val_loss": 5, "ece": 6, "peak_inference_mib": 7, "peak_train_mib": 8, "train_time_s": 9,
          "latency_iqr_ms": 10, "batch": 11}


def print_leaderboard(rows: list[dict[str, Any]], *, title: str, wide: bool = False, console: Any = None) -> None:
    """The leaderboard rows as a table that fits the terminal (see :mod:`dltricks.utils.tables`)."""
    from dltricks.experiments.leaderboard import COLUMNS, _cell
    from dltricks.utils.tables import Column, print_table

    shown = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    columns = [Column(header, number=key != "model", rank=_RANKS.get(key, 5)) for key, header, _ in shown]
    print_table(columns, [[_cell(row, k, f) for k, _, f in shown] for row in rows], title=title, wide=wide,
                console=console)


def run(args: argparse.Namespace) -> int:
    import datetime as _dt

    from rich.console import Console

    from dltricks.errors import ConfigError
    from dltricks.experiments.leaderboard import compare_models, disagreeing_pairs
    from dltricks.models._registry import model_entrypoint
    from dltricks.train.distributed import init_from_env, shutdown
    from dltricks.train.prepare import task_for_recipe
    from dltricks.train.runtime import resolve_device

    for name in args.models:
        model_entrypoint(name)
    if len(set(args.models)) != len(args.models):
        raise ConfigError("each MODEL may appear only once")
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch}")
    weights = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep or name not in args.models:
            raise ConfigError(f"--weights {item!r}: expected MODEL=PATH with MODEL one of {', '.join(args.models)}")
        if not Path(path).exists():
            raise ConfigError(f"--weights {item!r}: {path} does not exist")
        weights[name] = str(resolve_checkpoint(path))  # a run directory or a .safetensors file
    if weights and not args.eval_only:
        raise ConfigError("--weights only applies with --eval-only")
    untrained = [name for name in args.models if args.eval_only and name not in weights]
    if untrained:
        log(f"warning: --eval-only without --weights for {', '.join(untrained)}: their accuracy is that of a random "
            "initialisation (give --weights MODEL=RUN/model.safetensors, or drop --eval-only to train them)")
    recipe = recipe_from_args(args)
    data = data_args(args)
    if args.out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"compare-{args.data}-{stamp}"
    else:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {args.out}: exists and is not a directory")
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"--out {args.out}: already holds files; choose a new directory")
    dist = init_from_env(recipe.train.device)
    device = resolve_device(recipe.train.device, local_rank=dist.local_rank)
    # Each model is built by compare_models; the task is built once, from the recipe, for all of them.
    task = task_for_recipe(args.data, recipe, device=device, for_training=not args.eval_only, **data)
    data_meta, data_source = data_record(args, task, recipe)
    rows = compare_models(args.models, task, recipe, out_dir=out, train=not args.eval_only, weights=weights,
                          batch=args.batch, quick=args.quick, device=device, log=log, progress=args.progress,
                          run_meta={"data": data_meta, "data_source": data_source})
    shutdown()
    console = Console()
    print_leaderboard(rows, title=f"Leaderboard on {task.name}", wide=args.wide, console=console)
    for a, b in disagreeing_pairs(rows):
        console.print(f"MACs vs latency: {a} has more MACs than {b} but runs faster")
    console.print(f"leaderboard and plots: {out}")
    return 0
