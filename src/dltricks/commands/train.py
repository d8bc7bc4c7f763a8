"""``dltricks train MODEL --data NAME``: train a registered model on a data set with a recipe.

Every input is checked before anything is written: the recipe (unknown keys, wrong types, lr <= 0...),
the model name and options (types and bounds), the output folder (writable, not in use by a live run), the
data (missing folders, corrupted files...), and whether the model can take the data (its kind, then input
channels, image size, classifier width and the loss, by running it on two samples). Only then is the run
directory created and locked for the whole run (:mod:`dltricks.utils.lock`), so a bad command leaves no
files behind and two commands never write into one run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dltricks.commands._args import (add_common_data_args, claimed_run_dir, data_args, data_record, log, own_formatter,
                                     parse_options, print_final_metrics, print_history, print_metrics,
                                     recipe_from_args, resolve_checkpoint, run_dir_for)
from dltricks.commands._unlabelled import add_unlabelled_args, unlabelled_from_args
from dltricks.errors import ConfigError
from dltricks.train.recipe import list_recipes

EPILOG = """\
examples:
  dltricks train small_cnn --data mnist-embedded --epochs 3 --out runs/a
  dltricks train small_cnn --data mnist-embedded --epochs 3 --out runs/a --resume   # continue it after a kill
  dltricks train small_cnn --data mnist-embedded --epochs 6 --out runs/a --resume   # extend it to 6 epochs
  dltricks train resnet18 --data cifar10 --data-dir ../shared/data --recipe cifar10-resnet --subset 5000 --out runs/r18
  dltricks train small_cnn --data mnist --set optim.lr=0.05 --set train.label_smoothing=0.1 --init-from runs/a
  dltricks train unet_small --data isbi2012-membrane --recipe isbi-unet --data-opt fold=2 --out runs/unet
  dltricks train small_cnn --data mnist-embedded --overfit-batch          # sanity check: loss -> 0 on one batch
  dltricks train small_cnn --data mnist-embedded --subset 100 --unlabelled fixmatch --set train.steps=300
  dltricks train small_cnn --data mnist-embedded --unlabelled dann --unlabelled-data sklearn-digits
  torchrun --nproc_per_node 2 -m dltricks.cli train small_cnn --data mnist   # data parallel

Recipe keys (--set KEY=VALUE) are listed in docs/training.md and by `dltricks train --recipe-help`.
"""


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "train", help="train a model on a data set with a recipe", formatter_class=own_formatter(formatter),
        epilog=EPILOG,
        description="Train MODEL on a data set following a recipe (YAML + --set overrides). Writes metrics, "
                    "checkpoints and final weights to --out, and prints a results table.")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="registered model name (see `dltricks models`); default: the recipe's own model (recipe key "
                        "`model`), required when the recipe names none")
    add_common_data_args(p, data_required=False)
    p.add_argument("--val-subset", type=int, default=None, metavar="M",
                   help="evaluate on M validation samples drawn like --subset (quick runs); default: all")
    p.add_argument("--recipe", default=None, metavar="R",
                   help=f"recipe YAML file, or the name of a shipped recipe ({', '.join(list_recipes())}); default: "
                        "the built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one recipe key, e.g. --set optim.weight_decay=5e-4 "
                        "(repeatable; values are YAML 1.2); default: none")
    p.add_argument("--model-opt", dest="model_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor option, e.g. --model-opt drop_rate=0.1 "
                        "(repeatable; values are YAML, checked against the constructor's type hints); "
                        "num_classes and in_chans default to the data set's; default: the model's own defaults")
    p.add_argument("--epochs", type=int, default=None,
                   help="number of epochs (overrides train.epochs); default: the recipe's")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of initialisation, data order, augmentation and dropout (overrides train.seed); "
                        "default: the recipe's (0)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run directory for metrics, checkpoints and weights; default: runs/MODEL-DATA-TIMESTAMP")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where its last checkpoint stopped; default: start a new run")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="start from the weights of another run (its directory or a .safetensors file) instead of a "
                        "random initialisation; optimizer, schedule and step count start afresh; default: off")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="start from a timm/torchvision weight file (.safetensors, or .pth read with weights_only); "
                        "a classifier of another size is re-initialised (docs/transfer.md); default: off")
    p.add_argument("--log", choices=("none", "tensorboard"), default=None,
                   help="run tracking: 'tensorboard' writes event files to OUT/tensorboard (overrides train.log; "
                        "docs/serve.md); default: the recipe's (none)")
    p.add_argument("--overfit-batch", action="store_true",
                   help="sanity mode: train on one batch until its loss is ~0 (exit status 1 if it is not reached); "
                        "default: off")
    add_unlabelled_args(p)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar; default: only when stderr is a terminal")
    p.add_argument("--recipe-help", action="store_true",
                   help="list every recipe key with its default, written as --set KEY=VALUE takes it, and exit; "
                        "default: off")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dltricks.models._registry import model_entrypoint
    from dltricks.train import fit, prepare
    from dltricks.train.distributed import barrier, init_from_env, shutdown
    from dltricks.train.prepare import model_kwargs_for_task
    from dltricks.train.recipe import describe_recipe
    from dltricks.train.runtime import resolve_device

    if args.recipe_help:
        defaults = recipe_defaults()
        for key, tp, _, help_text in describe_recipe():
            print(f"{key:32s} {defaults[key]:>14s}  {help_text} ({tp})")
        return 0
    if not args.model and not args.recipe:
        raise ConfigError("MODEL is required, e.g. `dltricks train small_cnn --data mnist-embedded`")
    if not args.data:
        raise ConfigError("--data NAME is required (e.g. mnist, mnist-embedded, cifar10, imagefolder, "
                          "isbi2012-membrane; see `dltricks train --help`)")
    # 1. Everything that can be checked without data: recipe, model name and options, run directory.
    recipe = recipe_from_args(args)
    if not args.model:  # the recipe's own model (recipe key `model`), e.g. cifar10-speedrun -> airbench_cifar
        if not recipe.model:
            raise ConfigError(f"MODEL is required: recipe {args.recipe} names no model (recipe key `model`), e.g. "
                              f"`dltricks train small_cnn --recipe {args.recipe} --data mnist-embedded`")
        args.model = recipe.model
    model_entrypoint(args.model)
    model_opts = parse_options(args.model_opts, "--model-opt")
    data = data_args(args)
    run_dir = run_dir_for(args.out, resume=args.resume, model=args.model, data=args.data)
    dist = init_from_env(recipe.train.device)
    device = resolve_device(recipe.train.device, local_rank=dist.local_rank)
    # 2. The data, the model sized for it and whether they fit together: once, by the library.
    model, task = prepare(args.model, args.data, recipe, model_kwargs=model_opts, device=device, **data)
    pretrained = _pretrained_weights(model, args.model, getattr(args, "pretrained", None))
    init_from = _init_weights(model, args.init_from)
    unlabelled = unlabelled_from_args(args, recipe, task)
    barrier()  # every rank has checked --out before rank 0 creates it
    # 3. Train (the run directory is created by fit).
    data_meta, data_source = data_record(args, task, recipe)
    meta = {"model": args.model, "model_kwargs": model_kwargs_for_task(args.model, task, model_opts),
            "data": data_meta, "data_source": data_source, "init_from": init_from, "pretrained": pretrained,
            "command": "dltricks " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("dltricks") else None}
    if unlabelled is not None:
        meta["unlabelled"] = {"data": args.unlabelled_data, "images": len(unlabelled.images),
                              **vars(unlabelled.config)}
    # The run directory is held from here to the end (a second writer is refused), and checked again under
    # its lock: another command may have used it while the data was being read.
    with claimed_run_dir(run_dir, resume=args.resume, model=args.model, data=args.data, enabled=dist.is_main):
        result = fit(model, task, recipe, run_dir=run_dir, resume=args.resume, progress=args.progress, log=log,
                     meta=meta, unlabelled=unlabelled)
    shutdown()  # every rank has finished before the processes exit
    if dist.is_main and recipe.compress.qat and run_dir is not None:
        _save_int8(result, Path(run_dir), meta, recipe.compress.qat_backend)
    return _print_result(args, result, task, recipe, run_dir) if dist.is_main else 0


def _save_int8(result: Any, run_dir: Path, meta: dict[str, Any], backend: str) -> None:
    """``compress.qat``: the converted int8 model beside the fake-quantized one (``model.safetensors``)."""
    from dltricks.compress.storage import save_quantized

    path = save_quantized(run_dir / "model-int8.safetensors", result.model, {**meta, "method": "qat",
                                                                             "backend": backend})
    log(f"int8 model (quantization-aware training, {backend}): {path}")


def _pretrained_weights(model: Any, name: str, path: str | None) -> str | None:
    """Load the timm/torchvision weights of ``--pretrained`` into ``model``; returns the file read."""
    if path is None:
        return None
    from dltricks.models import model_info
    from dltricks.models._pretrained import load_pretrained
    from dltricks.train.checkpoint import unwrap

    report = load_pretrained(unwrap(model), path, family=model_info(name).family, name=name)
    log(report.summary())
    return str(Path(path).resolve())


def recipe_defaults() -> dict[str, str]:
    """Every recipe key's default written as ``--set KEY=VALUE`` reads it back (``null``, ``false``, ``[0.9,
    0.999]``...), for ``--recipe-help``."""
    import yaml

    from dltricks.config import to_dict
    from dltricks.train.recipe import Recipe

    texts = {}
    for section, values in to_dict(Recipe()).items():
        for key, value in (values.items() if isinstance(values, dict) and section != "data" else [(None, values)]):
            dumped = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            texts[f"{section}.{key}" if key else section] = dumped.removesuffix("...").strip()
    return texts


def _init_weights(model: Any, init_from: str | None) -> str | None:
    """Load the weights of ``--init-from`` into ``model``; returns the file read (recorded in the run)."""
    if init_from is None:
        return None
    from dltricks.train import load_weights

    path = resolve_checkpoint(init_from)
    load_weights(model, path)  # the EMA weights of a full checkpoint trained with EMA, as eval uses
    log(f"initialised from the weights in {path}")
    return str(path.resolve())


def _print_result(args: argparse.Namespace, result: Any, task: Any, recipe: Any, run_dir: Any) -> int:
    """The results table and summary line on stdout; the exit status."""
    final = result.final
    if recipe.train.overfit_batch:
        reached = result.stop_reason == "overfit_reached"
        print(f"overfit_batch: loss {final['loss']:.4g} after {final['step']} step(s): "
              f"{'reached' if reached else 'NOT reached'} target {recipe.train.overfit_loss:g}")
        return 0 if reached else 1
    if result.history:
        print_history(result.history, title=f"{args.model} on {task.name} ({result.stop_reason})")
        print_final_metrics(final, result.history)
    if result.stop_reason == "max_steps" and (not result.history or result.history[-1]["step"] != final["steps"]):
        print_metrics(final, title=f"at step {final['steps']}")
    best = final.get(f"best_{recipe.early_stop.metric}")
    summary = [f"final val accuracy {final['val_accuracy']:.2%}" if "val_accuracy" in final else "",
               (f"best {recipe.early_stop.metric} {best:.4f} (epoch {final['best_epoch']})"
                if best is not None else ""),
               f"{final['steps']} steps in {final['time_s']:.1f} s", f"run directory: {run_dir}",
               "stopped by train.max_steps (--resume continues)" if result.stop_reason == "max_steps" else ""]
    print("; ".join(s for s in summary if s))
    return 0
