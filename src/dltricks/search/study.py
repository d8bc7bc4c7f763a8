"""A search: an Optuna study whose trials are ``fit`` runs, on one worker or many.

Every trial samples one point of the space (:mod:`dltricks.search.space`), builds the recipe with
``load_recipe(base, overrides)`` and the model with ``prepare(model, data, recipe, model_kwargs=...)``,
and trains it with the one loop, :func:`dltricks.train.fit`, in its own run directory
(``OUT/trials/trial-NNNN``). Its validation metric is reported to the pruner after every epoch; a pruned
trial stops through ``fit``'s ``on_epoch`` callback (stop reason ``callback``). The trial records its
recipe, seed, model options, metrics and run directory as user attributes.

Storage. The study lives in a database: ``OUT/study.db`` (SQLite) by default, or any URL Optuna's
``RDBStorage`` accepts (``postgresql://user@host/db`` for several machines). Workers send a heartbeat
while a trial runs; a trial whose worker died (``kill -9``, a lost machine) has no heartbeat after the
grace period, is marked failed by the next worker that looks, and is queued again with the same
parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``). So the same command started again resumes, and the
same command started on another machine with ``--storage`` joins the study.

Exactly N. ``trials`` counts finished trials (complete or pruned). Before each trial a worker checks the
study: with N finished it stops, with N finished or running it waits (a running trial may still fail and
need a replacement). Two workers can still start a trial at the same moment; the one whose trial has the
higher number finds itself over the budget before training anything and marks it failed with the user
attribute ``surplus``. So the study ends with exactly N finished trials, however many workers.

Trials that cannot run (a combination the recipe refuses, a diverged loss) are marked failed with the
user attribute ``error``; after ``max_failures`` of them the search stops with a :class:`SearchError`.

Constraints. A space with ``constraints: {params: P, latency_ms: L}`` builds each trial's model, measures
it, and rejects one over a limit before training: the trial is marked failed with the user attribute
``infeasible`` (not an error, not counted among the N), and the worker asks the sampler again. Rejection
costs a model build (and, for latency, about 0.3 s of timing); a space whose every point is over the limit
stops after ``max(200, 20 N)`` rejections with a :class:`SearchError`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dltricks.errors import ConfigError, DltricksError
from dltricks.search.space import SearchSpace, load_space
from dltricks.train.recipe import Recipe, load_recipe

__all__ = ["SearchSpec", "SearchError", "SAMPLERS", "PRUNERS", "open_storage", "open_study", "make_sampler",
           "make_pruner", "run_worker", "trial_counts", "default_storage"]

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "grid", "evolution")
PRUNERS = ("median", "sha", "hyperband", "none")


class SearchError(DltricksError, RuntimeError):
    """The search cannot go on: a worker died or too many trials failed."""


class _Surplus(Exception):
    """A trial started while the budget was already taken (two workers asked at once)."""


class _TrialFailed(Exception):
    """A trial that cannot run: the message is kept in the trial's ``error`` attribute."""


class _Infeasible(Exception):
    """A trial whose model is over a limit of the space's ``constraints`` (attribute ``infeasible``)."""


@dataclass
class SearchSpec:
    """Everything a worker needs, picklable (workers are separate processes)."""

    model: str
    data: str
    space: SearchSpace
    recipe: Recipe
    trials: int
    storage: str
    study_name: str
    out: Path
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    workers: int = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    subset: int | None = None
    heartbeat_s: float = 10.0
    max_failures: int | None = None

    def identity(self) -> dict[str, Any]:
        """What must be equal for two commands to share a study (stored as the study's user attribute)."""
        return {"model": self.model, "data": self.data, "space": self.space.to_dict(),
                "subset": self.subset, "model_kwargs": _plain(self.model_kwargs)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _quiet_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# Storage, study, sampler, pruner


def default_storage(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def _redacted(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as given (it holds no usable password then)
        return url


def open_storage(url: str, *, heartbeat_s: float = 10.0) -> Any:
    """Optuna's ``RDBStorage`` for ``url`` with heartbeats and retry of dead trials; an unreachable or
    malformed URL is one :class:`ConfigError`."""
    _quiet_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"--storage {url!r}: expected a database URL such as sqlite:///study.db or "
                          "postgresql://user@host/db")
    connect: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect = {"timeout": 60}  # several processes on one SQLite file wait for the write lock
    elif url.startswith("postgresql"):
        connect = {"connect_timeout": 10}
    try:
        return RDBStorage(url, engine_kwargs={"connect_args": connect, "pool_pre_ping": True},
                          heartbeat_interval=max(1, int(round(heartbeat_s))),
                          grace_period=max(2, int(round(3 * heartbeat_s))),
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as err:  # a driver missing, a refused connection, a malformed URL: all one line
        problem = " ".join(str(err).split())[:300] or type(err).__name__
        raise ConfigError(f"--storage {_redacted(url)}: cannot open the study storage ({type(err).__name__}: "
                          f"{problem})") from err


def open_study(spec: SearchSpec, *, storage: Any | None = None, sampler: Any | None = None,
               pruner: Any | None = None) -> Any:
    """The study named ``spec.study_name``, created when missing; a study of another search (another model,
    data set, space or objectives) is refused with a :class:`ConfigError` and left untouched."""
    optuna = _quiet_optuna()
    storage = storage if storage is not None else open_storage(spec.storage, heartbeat_s=spec.heartbeat_s)
    study = optuna.create_study(storage=storage, study_name=spec.study_name, load_if_exists=True,
                                directions=spec.space.directions, sampler=sampler, pruner=pruner)
    identity = json.loads(json.dumps(spec.identity()))  # as the storage gives it back: tuples as lists
    stored = study.user_attrs.get("dltricks")
    if stored is None:
        study.set_user_attr("dltricks", identity)
    elif stored != identity:
        differ = [k for k in identity if stored.get(k) != identity[k]]
        raise ConfigError(f"study {spec.study_name!r} in {_redacted(spec.storage)} belongs to another search "
                          f"(different {', '.join(differ)}); nothing was changed. Use another --study-name or "
                          "--out, or the same space and options as before")
    if list(study.directions) != [getattr(optuna.study.StudyDirection, d.upper()) for d in spec.space.directions]:
        raise ConfigError(f"study {spec.study_name!r}: its objectives' directions differ from this search's")
    return study


def make_sampler(name: str, space: SearchSpace, *, seed: int, workers: int = 1) -> Any:
    """One of :data:`SAMPLERS` (Optuna's implementations), seeded."""
    optuna = _quiet_optuna()
    multi = len(space.objectives) > 1
    if name == "tpe":
        # Multivariate TPE models the parameters jointly (and, with group, conditional ones per branch);
        # the constant liar keeps parallel workers from proposing the same point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=workers > 1)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if multi:
            raise ConfigError("--sampler cmaes: CMA-ES optimises one objective; use tpe, random or qmc for several")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "evolution":
        from dltricks.search.evolution import RegularizedEvolutionSampler

        if multi:
            raise ConfigError("--sampler evolution: regularised evolution optimises one objective; put a parameter "
                              "or latency limit in the space's `constraints:` instead, or use tpe for a Pareto front")
        return RegularizedEvolutionSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r}: expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, *, epochs: int) -> Any:
    """One of :data:`PRUNERS`, fed by the per-epoch validation metric (resource = epochs)."""
    optuna = _quiet_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: expected one of {', '.join(PRUNERS)}")


# Counting


@dataclass(frozen=True)
class TrialCounts:
    finished: int  # complete or pruned
    running: int
    waiting: int
    errors: int  # failed with an `error` attribute (not killed, not surplus)
    infeasible: int = 0  # rejected by the space's constraints before training


def trial_counts(study: Any) -> TrialCounts:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    return TrialCounts(finished=sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
                       running=states.count(TrialState.RUNNING), waiting=states.count(TrialState.WAITING),
                       errors=sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials),
                       infeasible=sum(t.state == TrialState.FAIL and "infeasible" in t.user_attrs for t in trials))


def _over_budget(study: Any, number: int, budget: int) -> bool:
    """Whether trial ``number`` has no slot: ``budget`` trials are finished, or running with a lower number."""
    from optuna.trial import TrialState

    ahead = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        if t.state != TrialState.RUNNING or t.number < number:
            ahead += 1
    return ahead >= budget


# One trial


class _Objective:
    """Optuna's objective: one trial is one ``fit`` run (see the module docstring)."""

    def __init__(self, spec: SearchSpec, study: Any, *, log: Callable[[str], None] | None = None) -> None:
        self.spec, self.study, self.log = spec, study, log
        self.prunable = len(spec.space.objectives) == 1 and spec.pruner != "none"
        self._probe_task: Any = None  # a task that sizes models for the constraint check (the first one loaded)

    def __call__(self, trial: Any) -> float | list[float]:
        optuna = _quiet_optuna()
        spec = self.spec
        if _over_budget(self.study, trial.number, spec.trials):
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number}: the budget of {spec.trials} trials is taken")
        overrides, model_options = spec.space.suggest(trial)
        run_dir = spec.out / "trials" / f"trial-{trial.number:04d}"
        try:
            recipe = load_recipe(spec.recipe, overrides)
            kwargs = _model_options(spec, model_options)
            trial.set_user_attr("recipe", recipe.to_dict())
            trial.set_user_attr("seed", recipe.train.seed)
            trial.set_user_attr("model_kwargs", _plain(kwargs))
            trial.set_user_attr("run_dir", str(run_dir))
            return self._train(trial, recipe, kwargs, run_dir)
        except optuna.TrialPruned:
            raise
        except DltricksError as err:
            message = " ".join(str(err).split())
            trial.set_user_attr("error", message)
            if self.log:
                self.log(f"trial {trial.number}: failed ({message})")
            raise _TrialFailed(message) from err

    def _train(self, trial: Any, recipe: Recipe, kwargs: dict[str, Any], run_dir: Path) -> float | list[float]:
        from dltricks.train import fit, prepare
        from dltricks.train.prepare import model_for_task

        optuna = _quiet_optuna()
        spec = self.spec
        metric = spec.space.objectives[0][0]
        if spec.space.constraints and self._probe_task is not None:
            # Judge the architecture before any data is loaded, sized for the task the first trial loaded.
            probe, _ = model_for_task(spec.model, self._probe_task, model_kwargs=kwargs, seed=recipe.train.seed)
            self._check_constraints(trial, probe, self._probe_task)
        model, task = prepare(spec.model, spec.data, recipe, model_kwargs=kwargs, data_dir=spec.data_dir,
                              subset=spec.subset)
        if spec.space.constraints and self._probe_task is None:
            self._probe_task = task
            self._check_constraints(trial, model, task)
        pruned = False

        def on_epoch(record: dict[str, Any]) -> bool:
            nonlocal pruned
            if not self.prunable or metric not in record:
                return False
            trial.report(float(record[metric]), step=int(record["epoch"]))
            pruned = trial.should_prune()
            return pruned

        meta = {"model": spec.model, "model_kwargs": _plain(kwargs), "search": {"study": spec.study_name,
                                                                               "trial": trial.number},
                "data": {"name": spec.data, "data_dir": spec.data_dir, "subset": spec.subset}}
        t0 = time.perf_counter()
        result = fit(model, task, recipe, run_dir=run_dir, on_epoch=on_epoch, meta=meta, progress=False)
        metrics = {k: v for k, v in result.final.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("stop_reason", result.stop_reason)
        trial.set_user_attr("time_s", time.perf_counter() - t0)
        if pruned:
            if self.log:
                self.log(f"trial {trial.number}: pruned at epoch {result.final.get('epochs')} "
                         f"({metric} {result.final.get(metric, float('nan')):.4f})")
            raise optuna.TrialPruned()
        values = [self._value(name, result, task) for name, _ in spec.space.objectives]
        trial.set_user_attr("values", dict(zip([n for n, _ in spec.space.objectives], values)))
        if self.log:
            shown = ", ".join(f"{n} {v:.4g}" for n, v in zip([n for n, _ in spec.space.objectives], values))
            params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            self.log(f"trial {trial.number}: {shown} ({params}) in {time.perf_counter() - t0:.1f} s")
        return values[0] if len(values) == 1 else values

    def _check_constraints(self, trial: Any, model: Any, task: Any) -> None:
        """Measure the untrained model against the space's limits; over one: :class:`_Infeasible`."""
        measured = {name: _measure(name, model, task) for name, _ in self.spec.space.constraints}
        trial.set_user_attr("constraints", measured)
        over = [f"{name} {measured[name]:.4g} > {limit:.4g}" for name, limit in self.spec.space.constraints
                if measured[name] > limit]
        if over:
            trial.set_user_attr("infeasible", "; ".join(over))
            raise _Infeasible(f"trial {trial.number}: {'; '.join(over)}")

    @staticmethod
    def _value(name: str, result: Any, task: Any) -> float:
        if name in ("params", "latency_ms"):
            return _measure(name, result.model, task)
        if name not in result.final:
            reported = sorted(k for k in result.final if k.startswith("val_"))
            raise ConfigError(f"objective {name}: the run reports no such metric; it reports {', '.join(reported)}")
        return float(result.final[name])


def _measure(name: str, model: Any, task: Any) -> float:
    """``params`` (parameter count) or ``latency_ms`` (batch 1, CPU, inference mode, median) of ``model``."""
    import copy

    import torch

    from dltricks.measure.latency import measure_latency
    from dltricks.measure.params import count_params

    if name == "params":
        return float(count_params(model).total)
    # What a deployed classifier pays per image; on a copy, so the model stays on its device and in its mode.
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    x = torch.zeros(1, *task.input_shape)
    return measure_latency(cpu_model, [x], min_run_time=0.2).median * 1e3


def _model_options(spec: SearchSpec, sampled: dict[str, Any]) -> dict[str, Any]:
    """The fixed model options updated with the sampled ones; a list option searched by element
    (``model.OPTION.I``) keeps the fixed (or default) value at the indices the space does not search."""
    import inspect

    from dltricks.models._registry import model_entrypoint

    kwargs = {**spec.model_kwargs, **sampled}
    defaults = {k: p.default for k, p in inspect.signature(model_entrypoint(spec.model)).parameters.items()}
    for option in spec.space.element_options:
        base = spec.model_kwargs.get(option, defaults.get(option))
        if isinstance(base, (list, tuple)) and len(base) > len(sampled[option]):
            kwargs[option] = [*sampled[option], *list(base)[len(sampled[option]):]]
    return kwargs


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# One worker


def run_worker(spec: SearchSpec, index: int = 0, *, log: Callable[[str], None] | None = None,
               on_progress: Callable[[TrialCounts], None] | None = None) -> TrialCounts:
    """Run trials of the study until it holds ``spec.trials`` finished ones (see the module docstring)."""
    _quiet_optuna()
    from optuna.storages import fail_stale_trials

    storage = open_storage(spec.storage, heartbeat_s=spec.heartbeat_s)
    study = open_study(spec, storage=storage)
    # A different seed per worker and per restart, so that a resumed random search does not repeat itself.
    sampler_seed = spec.seed * 100_003 + index * 7_919 + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(spec.sampler, spec.space, seed=sampler_seed, workers=spec.workers)
    study.pruner = make_pruner(spec.pruner, epochs=spec.recipe.train.epochs)
    objective = _Objective(spec, study, log=log)
    max_failures = spec.max_failures if spec.max_failures is not None else max(10, spec.trials)
    max_infeasible = max(200, 20 * spec.trials)
    poll_s = min(1.0, spec.heartbeat_s)
    while True:
        fail_stale_trials(study)
        counts = trial_counts(study)
        if on_progress is not None:
            on_progress(counts)
        if counts.finished >= spec.trials:
            return counts
        if counts.errors >= max_failures:
            last = next(t.user_attrs["error"] for t in reversed(study.get_trials(deepcopy=False))
                        if "error" in t.user_attrs)
            raise SearchError(f"{counts.errors} trials failed (the last: {last}); stopping the search")
        if counts.finished + counts.running >= spec.trials and not counts.waiting:
            time.sleep(poll_s)  # the budget is taken unless a running trial dies
            continue
        if counts.infeasible >= max_infeasible:
            raise SearchError(f"{counts.infeasible} trials were over the space's constraints "
                              f"({dict(spec.space.constraints)}); loosen them or shrink the space")
        study.optimize(objective, n_trials=1, catch=(_Surplus, _TrialFailed, _Infeasible), gc_after_trial=False,
                       show_progress_bar=False)


def _worker_main(spec: SearchSpec, index: int) -> None:  # pragma: no cover - runs in a child process
    import sys

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(spec.workers, 1)))
    try:
        run_worker(spec, index, log=lambda text: print(f"[worker {index}] {text}", file=sys.stderr, flush=True))
    except DltricksError as err:
        print(f"[worker {index}] error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_workers(spec: SearchSpec, *, on_progress: Callable[[TrialCounts], None] | None = None,
                poll_s: float = 1.0) -> TrialCounts:
    """``spec.workers`` worker processes on one study; returns when all have finished."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads and DB pools
    procs = [ctx.Process(target=_worker_main, args=(spec, i), name=f"dltricks-search-{i}")
             for i in range(spec.workers)]
    for p in procs:
        p.start()
    storage = open_storage(spec.storage, heartbeat_s=spec.heartbeat_s)
    study = open_study(spec, storage=storage)
    try:
        while any(p.is_alive() for p in procs):
            if on_progress is not None:
                on_progress(trial_counts(study))
            time.sleep(poll_s)
    finally:
        for p in procs:
            p.join()
    failed = [p.name for p in procs if p.exitcode != 0]
    counts = trial_counts(study)
    if failed and counts.finished < spec.trials:
        raise SearchError(f"worker(s) {', '.join(failed)} stopped with an error before the study had "
                          f"{spec.trials} finished trials ({counts.finished}); see their messages above")
    return counts


def space_for(source: SearchSpace | Mapping[str, Any] | str | Path, *, model: str,
              objectives: list[str] | None = None) -> SearchSpace:
    if isinstance(source, SearchSpace):
        return source
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ConfigError(f"space file {str(source)!r} does not exist (expected a YAML file; see docs/search.md)")
    return load_space(source, model=model, objectives=objectives)
