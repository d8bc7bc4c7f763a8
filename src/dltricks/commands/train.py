"""``dltricks train MODEL --data NAME``: train a registered model on a data set with a recipe.

Every input is checked before anything is written: the recipe (unknown keys, wrong types, lr <= 0...),
the model name and options, the data (missing folders, corrupted files...), and whether the model can
take the data (input channels, image size, classifier width, by running it on two samples). Only then is
the run directory created, so a bad command leaves no files behind.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from dltricks.errors import ConfigError, DataError

EPILOG = """\
examples:
  dltricks train small_cnn --data mnist-embedded --epochs 3
  dltricks train resnet18 --data cifar10 --data-dir ../shared/data --recipe cifar10-resnet
  dltricks train small_cnn --data mnist --set optim.lr=0.05 --set train.label_smoothing=0.1
  dltricks train small_cnn --data mnist-embedded --out runs/a --resume   # continue an interrupted run
  dltricks train small_cnn --data mnist-embedded --overfit-batch          # sanity check: loss -> 0 on one batch
  torchrun --nproc_per_node 2 -m dltricks.cli train small_cnn --data mnist   # data parallel

Recipe keys (--set KEY=VALUE) are listed in docs/training.md and by `dltricks train --recipe-help`.
"""


def own_formatter(formatter: type) -> type:
    """The CLI's formatter, minus the automatic "(default: ...)" where the help text already states the
    default in words (e.g. "default: all" instead of "(default: None)")."""

    class Formatter(formatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            if "default" in text or "required" in text:
                return text
            return super()._get_help_string(action)

    return Formatter


def add_common_data_args(p: argparse.ArgumentParser, *, data_required: bool = True,
                         subset_help: str = "use only the first N training samples (quick runs); default: all") -> None:
    p.add_argument("--data", required=data_required, metavar="NAME",
                   help="data set: mnist, mnist-embedded (shipped, offline), cifar10, imagefolder, isbi2012-membrane, "
                        "or a sequence task (induction_heads, selective_copying, smnist, listops, dates) (required)")
    p.add_argument("--data-opt", dest="data_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="data set option, e.g. --data-opt elastic=true --data-opt fold=2 for isbi2012-membrane "
                        "(repeatable; the fields of the data set's options, docs/segmentation.md); default: none")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder (or file) holding the data set files; default: $DLTRICKS_DATA, then the standard "
                        "locations listed in docs/data.md")
    p.add_argument("--subset", type=int, default=None, metavar="N", help=subset_help)
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:N or mps; default: the recipe's train.device (auto: cuda, then mps, then cpu)")


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "train", help="train a model on a data set with a recipe", formatter_class=own_formatter(formatter),
        epilog=EPILOG,
        description="Train MODEL on a data set following a recipe (YAML + --set overrides). Writes metrics, "
                    "checkpoints and final weights to --out, and prints a results table.")
    p.add_argument("model", nargs="?", metavar="MODEL", help="registered model name (see `dltricks models`); required unless --recipe-help")
    add_common_data_args(p, data_required=False)
    p.add_argument("--recipe", default=None, metavar="R",
                   help="recipe YAML file, or the name of a shipped recipe (mnist-classic, mnist-speedrun, isbi-unet, "
                        "cifar10-resnet, quick); default: the built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one recipe key, e.g. --set optim.lr=0.05 (repeatable; values are YAML); default: none")
    p.add_argument("--model-opt", dest="model_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor option, e.g. --model-opt drop_rate=0.1 (repeatable); num_classes and "
                        "in_chans default to the data set's; default: the model's own defaults")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (overrides train.epochs); default: the recipe's")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of initialisation, data order, augmentation and dropout (overrides train.seed); "
                        "default: the recipe's (0)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run directory for metrics, checkpoints and weights; default: runs/MODEL-DATA-TIMESTAMP")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where its last checkpoint stopped; default: start a new run")
    p.add_argument("--overfit-batch", action="store_true",
                   help="sanity mode: train on one batch until its loss is ~0 (exit status 1 if it is not reached); "
                        "default: off")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar; default: only when stderr is a terminal")
    p.add_argument("--recipe-help", action="store_true", help="list every recipe key with its default value and exit")
    p.set_defaults(func=run)


def parse_key_values(items: list[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=[2, 3]"]`` -> ``{"a": 1, "b": [2, 3]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE, e.g. drop_rate=0.1")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def recipe_from_args(args: argparse.Namespace, *, extra: list[str] | None = None):
    """The recipe of a command line: file < --set < the dedicated flags."""
    from dltricks.train.recipe import load_recipe

    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "epochs", None) is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"train.seed={args.seed}")
    if getattr(args, "device", None) is not None:
        overrides.append(f"train.device={args.device}")
    if getattr(args, "overfit_batch", False):
        overrides.append("train.overfit_batch=true")
    overrides += extra or []
    return load_recipe(getattr(args, "recipe", None), overrides)


def build_task_from_args(args: argparse.Namespace, recipe, device, dist, *, for_training: bool = True,
                         batch_size: int | None = None, subset_split: str = "train"):
    from dltricks.tasks.base import build_task, check_task_options

    if args.data_dir is not None and not Path(args.data_dir).exists():
        raise DataError(f"--data-dir {args.data_dir}: no such file or folder; expected the folder (or file) "
                        f"holding the {args.data} data")
    if args.subset is not None and args.subset < 1:
        raise ConfigError(f"--subset: got {args.subset}, expected a positive number of samples")
    train_cfg = recipe.train
    augment = recipe.augment if (for_training and recipe.augment.active and not train_cfg.overfit_batch) else None
    bs = batch_size or train_cfg.batch_size
    subsets = {"val_subset" if subset_split == "val" else "subset": args.subset} if args.subset else {}
    # The recipe's `data` section, then --data-opt on top.
    data_options = {**recipe.data, **parse_key_values(getattr(args, "data_opts", []) or [], "--data-opt")}
    data_options = check_task_options(args.data, data_options)
    return build_task(args.data, batch_size=bs, eval_batch_size=train_cfg.eval_batch_size or 2 * bs,
                      data_dir=args.data_dir, seed=train_cfg.seed, augment=augment, rank=dist.rank,
                      world_size=dist.world_size, device=str(device), **subsets, **data_options)


def build_model_for_task(name: str, task, model_opts: dict[str, Any], seed: int):
    """Create ``name`` sized for the task (num_classes, in_chans) with the seed set first."""
    from dltricks.models import create_model
    from dltricks.train.runtime import seed_everything

    kwargs = dict(model_opts)
    # Options the task knows the model needs (e.g. a sequence task's vocabulary sizes); the user's
    # --model-opt values win.
    for key, value in (task.extra.get("model_kwargs") or {}).items():
        kwargs.setdefault(key, value)
    kwargs.setdefault("num_classes", task.num_classes)
    if task.in_chans is not None:
        kwargs.setdefault("in_chans", task.in_chans)
    seed_everything(seed)
    model = create_model(name, **kwargs)
    return model, kwargs


def prepare_run_dir(out: str | None, *, resume: bool, model: str, data: str) -> Path:
    """The run directory (not created yet): must hold a checkpoint with ``--resume``, must not hold a run
    without it."""
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out DIR, the run directory to continue")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("under torchrun pass --out DIR so that every process uses the same run directory")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{model}-{data}-{stamp}"
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    checkpoint = path / "checkpoints" / "last.safetensors"
    if resume and not checkpoint.is_file():
        raise ConfigError(f"--resume: {checkpoint} does not exist; nothing to resume (expected the --out of an "
                          "earlier `dltricks train`)")
    if not resume and path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"--out {out}: already holds files; pass --resume to continue that run or choose a new "
                          "directory")
    return path


def print_history(history: list[dict[str, Any]], *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = [("epoch", "epoch", "{:d}"), ("train_loss", "train loss", "{:.4f}"),
               ("train_accuracy", "train acc", "{:.2%}"), ("val_loss", "val loss", "{:.4f}"),
               ("val_accuracy", "val acc", "{:.2%}"), ("val_dice", "val Dice", "{:.4f}"),
               ("val_boundary_f1", "val boundary F1", "{:.4f}"), ("lr", "lr", "{:.3g}"),
               ("images_per_s", "img/s", "{:,.0f}"), ("epoch_time_s", "time (s)", "{:.1f}")]
    columns = [c for c in columns if any(c[0] in r for r in history)]
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for record in history:
        table.add_row(*(fmt.format(record[key]) if key in record else "" for key, _, fmt in columns))
    Console().print(table)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from dltricks.models._registry import model_entrypoint
    from dltricks.train import check_compatible, fit
    from dltricks.train.distributed import barrier, init_from_env, shutdown
    from dltricks.train.recipe import describe_recipe
    from dltricks.train.runtime import resolve_device

    if args.recipe_help:
        for key, tp, default, help_text in describe_recipe():
            print(f"{key:32s} {default:>14s}  {help_text} ({tp})")
        return 0
    if not args.model:
        raise ConfigError("MODEL is required, e.g. `dltricks train small_cnn --data mnist-embedded`")
    if not args.data:
        raise ConfigError("--data NAME is required (e.g. mnist, mnist-embedded, cifar10, imagefolder, "
                          "isbi2012-membrane; see `dltricks train --help`)")
    # 1. Everything that can be checked without data: recipe, model name and options, device.
    recipe = recipe_from_args(args)
    model_entrypoint(args.model)
    model_opts = parse_key_values(args.model_opts, "--model-opt")
    run_dir = prepare_run_dir(args.out, resume=args.resume, model=args.model, data=args.data)
    dist = init_from_env(recipe.train.device)
    device = resolve_device(recipe.train.device, local_rank=dist.local_rank)
    # 2. The data, then the model sized for it, then whether they fit together.
    task = build_task_from_args(args, recipe, device, dist)
    model, model_kwargs = build_model_for_task(args.model, task, model_opts, recipe.train.seed)
    check_compatible(model, task)
    barrier()  # every rank has checked --out before rank 0 creates it
    # 3. Train (the run directory is created by fit).
    meta = {"model": args.model, "model_kwargs": model_kwargs,
            "data": {"name": args.data, "data_dir": args.data_dir, "subset": args.subset},
            "command": "dltricks " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("dltricks") else None}
    result = fit(model, task, recipe, run_dir=run_dir, resume=args.resume, progress=args.progress, log=_log,
                 meta=meta)
    shutdown()  # every rank has finished before the processes exit
    if dist.is_main:
        if recipe.train.overfit_batch:
            reached = result.stop_reason == "overfit_reached"
            print(f"overfit_batch: loss {result.final['loss']:.4g} after {result.final['step']} step(s): "
                  f"{'reached' if reached else 'NOT reached'} target {recipe.train.overfit_loss:g}")
            return 0 if reached else 1
        print_history(result.history, title=f"{args.model} on {task.name} ({result.stop_reason})")
        best = result.final.get(f"best_{recipe.early_stop.metric}")
        summary = [f"final val accuracy {result.final['val_accuracy']:.2%}" if "val_accuracy" in result.final else "",
                   f"best {recipe.early_stop.metric} {best:.4f} (epoch {result.final['best_epoch']})" if best is not None else "",
                   f"{result.final['steps']} steps in {result.final['time_s']:.1f} s", f"run directory: {run_dir}"]
        print("; ".join(s for s in summary if s))
    return 0
