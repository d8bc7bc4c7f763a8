"""TPE against random search on a real objective: a small CNN on embedded MNIST, paired search seeds.

Each search runs ``--trials`` trials of :func:`dltricks.search.search` (so each trial is one
:func:`dltricks.train.fit` run) over four hyper-parameters of SGD training (below, ``SPACE``). For every
search seed ``s`` both samplers search the same space with sampler seed ``s``; every trial trains with the
same training seed, so a point of the space gives (up to CPU float noise) the same validation error
whichever sampler proposed it, and the only thing that differs between the two arms is the sampler. Per
seed we take the best validation error of the 30 trials; the effect is the paired difference
``best(random) - best(TPE)`` (positive: TPE found a better point), reported as the mean with a 95 %
Student-t interval over the seeds, together with the best-so-far curves (mean and 95 % interval after
every trial) and a check that every arm trained (each search holds ``--trials`` complete trials).

Bergstra et al. ("Algorithms for Hyper-Parameter Optimization", NeurIPS 2011) introduced TPE and found it
ahead of random search on deep belief networks; Optuna's TPE here is the multivariate variant (Falkner et
al. 2018's BOHB kernel density idea, Optuna's ``multivariate=True``) with 10 random start-up trials.

Usage (one core; the results of docs/search.md)::

    OMP_NUM_THREADS=1 python benchmarks/search_tpe_vs_random.py --seeds 8 --out runs/bench-tpe-vs-random
    python benchmarks/search_tpe_vs_random.py --seeds 2 --trials 6     # a smoke run, a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dltricks.evidence.stats import paired_interval
from dltricks.search import search

HYPER = {
    "model": "small_cnn",
    "widths": [8, 16, 16],  # channels of the three stages (3,712 parameters at 10 classes)
    "data": "mnist-embedded",  # the 8,000 / 2,000 train / validation split shipped with the package
    "subset": 1000,  # training images per trial (class-stratified draw; all 2,000 validation images are scored)
    "epochs": 2,  # per trial, no pruning: every trial spends the same budget
    "trials": 30,  # per search
    "train_seed": 0,  # the same initial weights and batch order for every trial
}

# SGD with momentum; constant learning rate (the recipe's default schedule).
SPACE = {"params": {
    "optim.lr": {"log_uniform": [1.0e-4, 1.0]},
    "optim.momentum": {"uniform": [0.0, 0.99]},
    "optim.weight_decay": {"log_uniform": [1.0e-6, 1.0e-2]},
    "train.batch_size": {"int": [16, 256], "log": True},
}}


def run_search(sampler: str, seed: int, *, hyper: dict, out: Path) -> list[float]:
    """One search; returns the validation error of each complete trial, in trial order."""
    recipe = {"optim": {"name": "sgd"},
              "train": {"epochs": hyper["epochs"], "seed": hyper["train_seed"], "device": "cpu"},
              "checkpoint": {"every_epochs": 0, "keep_best": False}}
    result = search(hyper["model"], hyper["data"], SPACE, trials=hyper["trials"], recipe=recipe,
                    model_kwargs={"widths": hyper["widths"]}, subset=hyper["subset"], sampler=sampler,
                    pruner="none", seed=seed, out=out / f"{sampler}-seed{seed}", plots=False, progress=False)
    trials = sorted(result.study.get_trials(deepcopy=False), key=lambda t: t.number)
    errors = [1.0 - t.values[0] for t in trials if t.state.name == "COMPLETE"]
    if len(errors) != hyper["trials"]:
        raise RuntimeError(f"{sampler} seed {seed}: {len(errors)} complete trials, expected {hyper['trials']}")
    return errors


def best_so_far(errors: list[float]) -> list[float]:
    best, curve = float("inf"), []
    for e in errors:
        best = min(best, e)
        curve.append(best)
    return curve


def summary(runs: dict[str, dict[int, list[float]]], trials: int) -> dict:
    seeds = sorted(set(runs["tpe"]) & set(runs["random"]))
    best = {s: {arm: min(runs[arm][s]) for arm in ("tpe", "random")} for s in seeds}
    effect = paired_interval([best[s]["random"] - best[s]["tpe"] for s in seeds]) if seeds else None
    curves = {}
    for arm in ("tpe", "random"):
        per_trial = list(zip(*[best_so_far(runs[arm][s]) for s in seeds]))
        curves[arm] = [{"trial": i + 1, "mean": statistics.fmean(v), "ci": _half_width(list(v))}
                       for i, v in enumerate(per_trial)]
    return {"seeds": seeds, "best_error": best, "effect_random_minus_tpe": effect.to_dict() if effect else None,
            "mean_best_error": {arm: statistics.fmean(best[s][arm] for s in seeds) for arm in ("tpe", "random")}
            if seeds else None, "best_so_far": curves, "trials": trials}


def _half_width(values: list[float]) -> float | None:
    iv = paired_interval(values)
    return None if iv.lo is None else iv.mean - iv.lo


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for arm, colour in (("tpe", "tab:blue"), ("random", "tab:orange")):
        curve = report["best_so_far"][arm]
        x = [c["trial"] for c in curve]
        mean = [c["mean"] for c in curve]
        ci = [c["ci"] or 0.0 for c in curve]
        ax.plot(x, mean, color=colour, label=arm)
        ax.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], color=colour,
                        alpha=0.2)
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation error so far")
    ax.set_yscale("log")
    ax.set_title(f"TPE vs random, {len(report['seeds'])} search seeds (mean, 95 % CI)")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="search seeds (each runs both samplers)")
    parser.add_argument("--trials", type=int, default=HYPER["trials"], help="trials per search")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-search-tpe-vs-random"))
    parser.add_argument("--plot", type=Path, default=None, help="best-so-far curves as PNG (default: OUT/curves.png)")
    args = parser.parse_args()
    hyper = {**HYPER, "trials": args.trials}
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, list[float]]] = {"tpe": {}, "random": {}}
    t0, cpu0 = time.perf_counter(), time.process_time()
    for seed in range(args.seeds):
        for sampler in ("tpe", "random"):
            t = time.perf_counter()
            runs[sampler][seed] = run_search(sampler, seed, hyper=hyper, out=args.out)
            print(f"seed {seed} {sampler:6s}: best val error {min(runs[sampler][seed]):.4f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    threads = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}"
    report = {**summary(runs, args.trials), "hyper": hyper, "space": SPACE, "errors": runs, "wall_s": wall,
              "cpu_s": time.process_time() - cpu0,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, {threads}",
              "torch": torch.__version__, "python": platform.python_version()}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    plot(report, args.plot or args.out / "curves.png")
    eff = report["effect_random_minus_tpe"]
    print(f"mean best val error: TPE {report['mean_best_error']['tpe']:.4f}, random "
          f"{report['mean_best_error']['random']:.4f}")
    print(f"paired effect best(random) - best(TPE): {eff['mean']:+.4f}, 95% CI [{eff['lo']:+.4f}, {eff['hi']:+.4f}], "
          f"sd {eff['sd']:.4f}, n = {eff['n']}")
    for k in (5, 10, 20, args.trials):
        if k <= args.trials:
            print(f"after {k:2d} trials: TPE {report['best_so_far']['tpe'][k - 1]['mean']:.4f}, random "
                  f"{report['best_so_far']['random'][k - 1]['mean']:.4f}")
    print(f"wall {wall:.0f} s, CPU {report['cpu_s']:.0f} s (on a shared machine the CPU time is the one-core cost), "
          f"{report['machine']}, torch {torch.__version__}; {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
