"""``dltricks search MODEL --data NAME --space SPACE.yaml --trials N``: hyper-parameter search on Optuna.

The space, the recipe, the model, the storage and the study are checked before any trial trains: a bad
input is one line on stderr with exit code 2, and a study of another search is left untouched. The same
command started again resumes the study (``--out`` holds it); started on another machine with the same
``--storage``, it joins the study. See docs/search.md.
"""

from __future__ import annotations

import argparse

from dltricks.commands._args import (add_common_data_args, data_args, log, own_formatter, parse_options,
                                     recipe_from_args)
from dltricks.errors import ConfigError

EPILOG = """\
examples:
  dltricks search small_cnn --data mnist-embedded --space space.yaml --trials 30 --epochs 3
  dltricks search small_cnn --data mnist-embedded --space space.yaml --trials 30 --sampler random --pruner none
  dltricks search small_cnn --data mnist-embedded --space space.yaml --trials 40 --objective val_accuracy:max \\
      --objective params:min                          # several objectives: the Pareto front
  dltricks search nas_cnn --data mnist-embedded --space nas.yaml --trials 40 --sampler evolution
                                                      # architecture search (docs/search.md)
  dltricks search small_cnn --data mnist --space space.yaml --trials 200 --workers 4 \\
      --storage postgresql://dltricks@db-host/dltricks   # the same command on other machines joins

A space file maps recipe keys (and model.OPTION) to distributions:
  params:
    optim.lr: {log_uniform: [1.0e-3, 1.0]}
    optim.name: {choice: [sgd, adamw]}
    optim.momentum: {uniform: [0.5, 0.99], when: {optim.name: sgd}}
    model.drop_rate: {uniform: [0.0, 0.5]}
    model.depths.0: {int: [1, 3]}       # one element of a list option (per-stage NAS choices)
  constraints: {params: 50000}          # optional upper limits (params, latency_ms), checked before training
"""


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    from dltricks.search import PRUNERS, SAMPLERS

    p = subparsers.add_parser(
        "search", help="search recipe keys and model options with Optuna (HPO)", epilog=EPILOG,
        formatter_class=own_formatter(formatter),
        description="Search hyper-parameters: each trial trains MODEL with a recipe sampled from the space file; "
                    "prints the best trials, writes plots, best_recipe.yaml (for `dltricks train --recipe`) "
                    "and best.json to --out.")
    p.add_argument("model", metavar="MODEL", help="registered model name (see `dltricks models`)")
    add_common_data_args(p)
    p.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="search space: recipe keys and model.OPTION mapped to distributions (required)")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="finished trials the study should hold (a resumed study runs the missing ones) (required)")
    p.add_argument("--recipe", default=None, metavar="R", help="base recipe (YAML file or shipped name); "
                   "default: the built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the base recipe (repeatable); default: none")
    p.add_argument("--model-opt", dest="model_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed model option (repeatable); default: the model's own defaults")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (train.epochs); default: the recipe's")
    p.add_argument("--objective", dest="objectives", action="append", default=None, metavar="METRIC[:max|min]",
                   help="what to optimise: val_accuracy, val_loss, any val_<metric>, params or latency_ms "
                        "(repeatable: several give a Pareto front); default: the space file's, else val_accuracy:max")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler")
    p.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="early stopping of poor trials from the per-epoch validation metric (single objective)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="study database, e.g. postgresql://user@host/db to share a study between machines; "
                        "default: sqlite in --out")
    p.add_argument("--study-name", default=None, metavar="NAME", help="default: MODEL-DATA")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="worker processes on this machine")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="search directory (study.db, trials/, plots/, best_recipe.yaml); the same DIR resumes; "
                        "default: runs/search-MODEL-DATA")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the sampler (trials keep train.seed)")
    p.add_argument("--heartbeat", type=float, default=10.0, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 3x this is marked "
                        "failed and retried")
    p.add_argument("--top", type=int, default=10, help="rows of the final table")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write Optuna's plots")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar over trials; default: only when stderr is a terminal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dltricks.search import search
    from dltricks.search.report import print_table

    if args.workers < 1:
        raise ConfigError(f"--workers: got {args.workers}, expected a positive number of processes")
    if args.heartbeat <= 0:
        raise ConfigError(f"--heartbeat: got {args.heartbeat:g}, expected seconds > 0")
    if getattr(args, "subset_seed", None) is not None:
        raise ConfigError("--subset-seed: not supported by dltricks search yet; every trial uses the default draw "
                          "of --subset (and so does the exported `dltricks train` command)")
    recipe = recipe_from_args(args)
    data = data_args(args)
    result = search(args.model, args.data, args.space, trials=args.trials, recipe=recipe,
                    model_kwargs=parse_options(args.model_opts, "--model-opt"), objectives=args.objectives,
                    sampler=args.sampler, pruner=args.pruner, storage=args.storage, study_name=args.study_name,
                    out=args.out, workers=args.workers, seed=args.sampler_seed, data_dir=data["data_dir"],
                    subset=data["subset"], heartbeat_s=args.heartbeat, plots=args.plots, progress=args.progress,
                    log=log)
    names = [m for m, _ in result.space.objectives]
    print_table(result.study, metric_names=names, top=args.top)
    if result.best_recipe is None:
        print(f"no trial completed; search directory: {result.out}")
        return 1
    best = result.best_trials[0]
    values = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, best.values))
    front = f"; {len(result.best_trials)} trials on the Pareto front" if len(names) > 1 else ""
    print(f"best trial {best.number}: {values}{front}; recipe: {result.best_recipe}; plots: {result.out / 'plots'}")
    import json

    print("train it: " + json.loads((result.out / "best.json").read_text())["command"])
    return 0
