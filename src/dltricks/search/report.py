"""What a search found: the trials table, Optuna's plots, the best recipe as YAML.

* :func:`trial_rows`: one row per finished trial (number, state, values, parameters, time), best first;
* :func:`best_trials`: the best trial (one objective) or the Pareto front (several);
* :func:`write_plots`: optimisation history, parameter importances, parallel coordinates and, for
  several objectives, the Pareto front (Optuna's matplotlib visualisations) as PNG files;
* :func:`export_best`: ``best_recipe.yaml``, a complete recipe that ``dltricks train --recipe`` takes
  unchanged, and ``best.json`` (values, parameters, model options, the ``dltricks train`` command).
"""

from __future__ import annotations

import json
import shlex
import warnings
from pathlib import Path
from typing import Any

import yaml

from dltricks.utils.io import atomic_write_json, atomic_write_text

__all__ = ["trial_rows", "best_trials", "write_plots", "export_best", "print_table"]


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def best_trials(study: Any) -> list[Any]:
    """The best complete trial (one objective) or the Pareto-optimal ones (several), best first by the
    first objective."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = -1 if study.directions[0].name == "MAXIMIZE" else 1
    return sorted(study.best_trials, key=lambda t: sign * t.values[0])


def trial_rows(study: Any, *, metric_names: list[str]) -> list[dict[str, Any]]:
    """Finished trials as plain rows, complete ones best first by the first objective, pruned ones after."""
    sign = -1 if study.directions[0].name == "MAXIMIZE" else 1
    rows = []
    pareto = {t.number for t in best_trials(study)}
    for t in _finished(study):
        values = dict(zip(metric_names, t.values)) if t.values is not None else {}
        # Objectives under "values": an objective may be called `params`, like the sampled parameters.
        rows.append({"trial": t.number, "state": t.state.name.lower(), "best": t.number in pareto, "values": values,
                     "params": dict(t.params), "time_s": t.user_attrs.get("time_s"),
                     "run_dir": t.user_attrs.get("run_dir")})
    first = metric_names[0]
    return sorted(rows, key=lambda r: (r["state"] != "complete", sign * r["values"].get(first, 0.0)))


def print_table(study: Any, *, metric_names: list[str], top: int = 10) -> None:
    """The best ``top`` finished trials as a table on stdout (Pareto-optimal ones marked *)."""
    from dltricks.utils.tables import table_console
    from rich.table import Table

    rows = trial_rows(study, metric_names=metric_names)
    params = sorted({k for r in rows for k in r["params"]})
    table = Table(title=f"study {study.study_name}: best {min(top, len(rows))} of {len(rows)} finished trials")
    for header in ["trial", *metric_names, *params, "state", "time (s)"]:
        table.add_column(header, justify="right")
    for r in rows[:top]:
        cells = [f"{r['trial']}{'*' if r['best'] else ''}"]
        cells += [f"{r['values'][m]:.4g}" if m in r["values"] else "" for m in metric_names]
        cells += [_fmt(r["params"].get(p)) for p in params]
        cells += [r["state"], f"{r['time_s']:.1f}" if r["time_s"] is not None else ""]
        table.add_row(*cells)
    table_console().print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_plots(study: Any, out: Path, *, metric_names: list[str]) -> list[Path]:
    """Optuna's matplotlib plots of the study as PNG files in ``out``; a plot the study cannot have yet
    (importances need two complete trials and two parameters) is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    single = len(metric_names) == 1
    first = {"target": (lambda t: t.values[0]), "target_name": metric_names[0]} if not single else \
        {"target_name": metric_names[0]}
    plots: dict[str, Any] = {
        "history": lambda: vis.plot_optimization_history(study, **first),
        "importances": lambda: vis.plot_param_importances(study, **first),
        "parallel_coordinates": lambda: vis.plot_parallel_coordinate(study, **first),
    }
    if not single:
        plots["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=metric_names)
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = draw()
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def export_best(study: Any, out: Path, *, model: str, data: str, metric_names: list[str],
                subset: int | None = None, data_dir: str | None = None) -> Path | None:
    """Write ``best_recipe.yaml`` and ``best.json`` for the best trial (the best on the first objective
    among the Pareto-optimal ones); ``None`` when no trial completed."""
    best = best_trials(study)
    if not best:
        return None
    trial = best[0]
    recipe = trial.user_attrs["recipe"]
    values = dict(zip(metric_names, trial.values))
    path = out / "best_recipe.yaml"
    header = (f"# Best recipe of study {study.study_name}, trial {trial.number}: "
              + ", ".join(f"{k} {v:.4g}" for k, v in values.items()) + "\n"
              + f"# Found by `dltricks search {model} --data {data}`; train it with the command in best.json.\n")
    atomic_write_text(path, header + yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None))
    command = ["dltricks", "train", model, "--data", data, "--recipe", str(path)]
    if subset is not None:
        command += ["--subset", str(subset)]
    if data_dir is not None:
        command += ["--data-dir", data_dir]
    for key, value in trial.user_attrs.get("model_kwargs", {}).items():
        command += ["--model-opt", f"{key}={json.dumps(value)}"]
    atomic_write_json(out / "best.json", {
        "study": study.study_name, "trial": trial.number, "values": values, "params": dict(trial.params),
        "model": model, "model_kwargs": trial.user_attrs.get("model_kwargs", {}), "data": data,
        "recipe": str(path), "run_dir": trial.user_attrs.get("run_dir"), "command": shlex.join(command),
        "pareto_front": [{"trial": t.number, "values": dict(zip(metric_names, t.values)), "params": dict(t.params)}
                         for t in best]})
    return path
