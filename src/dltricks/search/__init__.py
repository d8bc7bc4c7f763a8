"""Hyper-parameter search on Optuna: ``search(model, data, space, trials=N) -> SearchResult``.

* :mod:`dltricks.search.space`: the space file (dotted recipe keys and ``model.OPTION`` -> distributions,
  conditional choices, objectives), checked against the recipe's and the model's types;
* :mod:`dltricks.search.study`: the study (SQLite in the run directory by default, PostgreSQL for many
  machines), samplers, pruners, the objective (one trial = one :func:`dltricks.train.fit` run) and the
  workers, which stop at exactly N finished trials;
* :mod:`dltricks.search.report`: the trials table, Optuna's plots and the best recipe as YAML;
* :mod:`dltricks.search.evolution`: regularised evolution (Real et al. 2019) as an Optuna sampler, for
  architecture search over the per-stage options of ``nas_cnn`` (``model.blocks.0``...), optionally under a
  parameter or latency limit (the space's ``constraints``).

Optuna does the sampling (TPE, random, CMA-ES, QMC, grid; evolution is ours, on Optuna's sampler API), the
pruning (median, successive halving, Hyperband) and the storage; dltricks adds the space file, the one
training loop and the bookkeeping.
See docs/search.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dltricks.errors import ConfigError
from dltricks.search.space import Param, SearchSpace, load_space, parse_objective
from dltricks.search.study import (PRUNERS, SAMPLERS, SearchError, SearchSpec, TrialCounts, default_storage,
                                   make_sampler, open_storage, open_study, run_worker, run_workers, space_for)
from dltricks.train.recipe import Recipe, load_recipe

__all__ = ["search", "SearchResult", "SearchSpace", "Param", "load_space", "parse_objective", "SearchSpec",
           "SearchError", "SAMPLERS", "PRUNERS", "open_storage", "open_study", "run_worker"]


@dataclass
class SearchResult:
    """What :func:`search` returns: the Optuna study, the run directory, the best trial(s) and the files."""

    study: Any
    space: SearchSpace
    out: Path
    best_trials: list[Any]
    best_recipe: Path | None
    plots: list[Path]
    counts: TrialCounts

    @property
    def best_values(self) -> dict[str, float] | None:
        """The objectives of the best trial (the first of the Pareto front), by name."""
        if not self.best_trials:
            return None
        return dict(zip([m for m, _ in self.space.objectives], self.best_trials[0].values))


def _check_args(trials: int, workers: int, sampler: str, pruner: str) -> None:
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"--trials: got {trials!r}, expected a positive number of trials")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers: got {workers!r}, expected a positive number of processes")
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r}: expected one of {', '.join(PRUNERS)}")


def search(model: str, data: str, space: SearchSpace | Mapping[str, Any] | str | Path, *, trials: int,
           recipe: Recipe | Mapping[str, Any] | str | Path | None = None, model_kwargs: Mapping[str, Any] | None = None,
           objectives: list[str] | None = None, sampler: str = "tpe", pruner: str = "median",
           storage: str | None = None, study_name: str | None = None, out: str | Path | None = None,
           workers: int = 1, seed: int = 0, data_dir: str | None = None, subset: int | None = None,
           heartbeat_s: float = 10.0, max_failures: int | None = None, plots: bool = True,
           progress: bool | None = None, log: Callable[[str], None] | None = None) -> SearchResult:
    """Search ``space`` for the recipe (and model options) that train registered model ``model`` best on
    data set ``data``, until the study holds ``trials`` finished trials.

    ``out`` (default ``runs/search-MODEL-DATA``) holds ``study.db`` (unless ``storage`` is given), one run
    directory per trial, the plots, ``best_recipe.yaml`` and ``best.json``. Calling again with the same
    arguments resumes the study; ``workers`` > 1 starts that many processes on it.
    """
    from dltricks.models._registry import model_entrypoint
    from dltricks.search.report import best_trials, export_best, write_plots
    from dltricks.utils.progress import ProgressBar

    _check_args(trials, workers, sampler, pruner)
    model_entrypoint(model)
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    space = space_for(space, model=model, objectives=objectives)
    make_sampler(sampler, space, seed=seed)  # grid with conditional keys, evolution with several objectives: refused
    out = Path(out) if out is not None else Path("runs") / f"search-{model}-{data}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    name = study_name or re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{data}")
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
    spec = SearchSpec(model=model, data=data, space=space, recipe=base, trials=trials,
                      storage=storage or default_storage(out), study_name=name, out=out.resolve(), sampler=sampler,
                      pruner=pruner, seed=seed, workers=workers, model_kwargs=dict(model_kwargs or {}),
                      data_dir=data_dir, subset=subset, heartbeat_s=heartbeat_s, max_failures=max_failures)
    study = open_study(spec)  # a bad storage or another search's study fails here, before any training
    out.mkdir(parents=True, exist_ok=True)
    metric_names = [m for m, _ in space.objectives]
    with ProgressBar(trials, f"search {name}", enabled=progress) as bar:
        shown = 0

        def on_progress(counts: TrialCounts) -> None:
            nonlocal shown
            done = min(counts.finished, trials)
            if done > shown:
                bar.advance(done - shown, running=str(counts.running))
                shown = done

        if workers == 1:
            counts = run_worker(spec, 0, log=log, on_progress=on_progress)
        else:
            counts = run_workers(spec, on_progress=on_progress)
    written = write_plots(study, out / "plots", metric_names=metric_names) if plots else []
    best_recipe = export_best(study, out, model=model, data=data, metric_names=metric_names, subset=subset,
                              data_dir=data_dir)
    return SearchResult(study=study, space=space, out=out, best_trials=best_trials(study), best_recipe=best_recipe,
                        plots=written, counts=counts)
