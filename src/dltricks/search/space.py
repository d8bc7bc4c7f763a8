"""The search space: a small YAML file that gives recipe keys and model options a distribution.

A space file maps dotted keys to one distribution each (and may name the objectives)::

    objectives: [val_accuracy:max]            # optional; also params:min, latency_ms:min, val_loss:min...
    params:
      optim.lr: {log_uniform: [1.0e-3, 1.0]}   # log-uniform on [low, high], low > 0
      optim.weight_decay: {uniform: [0.0, 1.0e-3]}
      train.batch_size: {int: [32, 256], log: true}   # integers; `step: 16` for a coarser lattice
      optim.name: {choice: [sgd, adamw]}       # categorical (any YAML values, lists included)
      optim.momentum: {uniform: [0.5, 0.99], when: {optim.name: sgd}}   # only sampled when optim.name is sgd
      model.drop_rate: {uniform: [0.0, 0.5]}   # a model option (a keyword of the model's constructor)

``model.KEY.I`` (``I`` = 0, 1, ...) is element ``I`` of a list option, sampled on its own: the keys
``model.depths.0`` ... ``model.depths.2`` together give ``depths=[d0, d1, d2]``, which is how an architecture
search names per-stage choices (docs/search.md, "Neural architecture search"). The indices of one option
run from 0 without gaps, and an element cannot be conditional (the whole list must be known).

An optional ``constraints:`` mapping puts upper limits on ``params`` (parameter count) and ``latency_ms``
(batch-1 CPU inference): a trial whose model is over a limit is rejected before it trains (marked failed
with the user attribute ``infeasible``, not counted among the N trials), so a search under
``constraints: {params: 50000}`` only trains models of at most 50,000 parameters.

``model.KEY`` is an option of the model's constructor, checked against its type hints; every other key is
a recipe key (``dltricks train --recipe-help`` lists them), checked against the recipe's types and value
checks: a distribution must fit the key's type (``uniform`` on an integer key, or on ``optim.name``, is an
error), and both ends of a range must be values the key accepts (``optim.lr`` > 0). A ``when`` condition
names another categorical parameter and the value (or list of values) under which this one is sampled;
otherwise the key keeps the base recipe's value. ``grid: [values]`` fixes the points the grid sampler
uses for a continuous parameter (default: 5 points, geometric for log scales).

:meth:`SearchSpace.suggest` asks an Optuna trial for one point and returns the recipe overrides and model
options; :meth:`SearchSpace.grid` is the space as the grid sampler wants it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
from collections import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from dltricks.config import coerce, load_yaml
from dltricks.errors import ConfigError, did_you_mean
from dltricks.train.recipe import Recipe, describe_recipe

__all__ = ["Param", "SearchSpace", "load_space", "parse_objective", "KINDS", "MODEL_OBJECTIVES"]

KINDS = ("log_uniform", "uniform", "int", "choice")
_OPTIONS = {"when", "log", "step", "grid"}
_PRIMITIVE = (str, int, float, bool, type(None))
# Objectives that are not a metric of the run: measured on the trained model (lower is better).
MODEL_OBJECTIVES = ("params", "latency_ms")


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` in :data:`KINDS`, ``low``/``high`` for ranges, ``choices`` for categories."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    grid_points: tuple[Any, ...] = ()

    @property
    def is_model_option(self) -> bool:
        return self.key.startswith("model.")

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the ``when`` conditions hold for the values ``chosen`` so far."""
        return all(key in chosen and chosen[key] in values for key, values in self.when)

    def encoded_choices(self) -> list[Any]:
        """Choices as Optuna stores them: plain values as they are, lists and mappings as JSON text."""
        return [c if isinstance(c, _PRIMITIVE) else json.dumps(c) for c in self.choices]

    def decode(self, value: Any) -> Any:
        if self.kind == "choice" and isinstance(value, str) and value not in self.choices:
            return json.loads(value)
        return value

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.key, self.encoded_choices()))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def grid(self, points: int = 5) -> list[Any]:
        """The values the grid sampler tries."""
        if self.grid_points:
            return list(self.grid_points)
        if self.kind == "choice":
            return self.encoded_choices()
        if self.kind == "int":
            values = list(range(int(self.low), int(self.high) + 1, self.step or 1))
            if len(values) <= points:
                return values
            idx = [round(i * (len(values) - 1) / (points - 1)) for i in range(points)]
            return sorted({values[i] for i in idx})
        if self.log:
            ratio = math.log(self.high / self.low)
            return [self.low * math.exp(ratio * i / (points - 1)) for i in range(points)]
        return [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]


@dataclass(frozen=True)
class SearchSpace:
    """The searched parameters (in file order) and the objectives ``(metric, "maximize" | "minimize")``."""

    params: tuple[Param, ...]
    objectives: tuple[tuple[str, str], ...] = (("val_accuracy", "maximize"),)
    constraints: tuple[tuple[str, float], ...] = ()  # (MODEL_OBJECTIVES name, upper limit)

    def suggest(self, trial: Any) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
        """One point of the space from ``trial``: recipe overrides ``[(key, value)]`` and model options."""
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.active(chosen):
                chosen[param.key] = param.suggest(trial)
        return _split(chosen)

    def decode(self, params: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
        """A trial's stored ``params`` back as recipe overrides and model options."""
        by_key = {p.key: p for p in self.params}
        values = {k: by_key[k].decode(v) if k in by_key else v for k, v in params.items()}
        return _split(values)

    def grid(self, points: int = 5) -> dict[str, list[Any]]:
        if any(p.when for p in self.params):
            raise ConfigError("--sampler grid: the grid sampler cannot search conditional parameters (`when`); "
                              "use tpe or random")
        return {p.key: p.grid(points) for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        """A canonical, JSON-able form (stored with the study so that another space is refused)."""
        found = {"objectives": [f"{m}:{'max' if d == 'maximize' else 'min'}" for m, d in self.objectives],
                 "params": {p.key: {k: v for k, v in dataclasses.asdict(p).items() if k != "key" and v not in
                                    (None, False, ())} for p in self.params}}
        if self.constraints:  # absent when empty, so that studies stored before constraints existed still match
            found["constraints"] = dict(self.constraints)
        return found

    @property
    def element_options(self) -> dict[str, int]:
        """List options searched by element (``model.OPTION.I``) and how many elements are searched."""
        found: dict[str, int] = {}
        for p in self.params:
            match = _ELEMENT.match(p.key)
            if match:
                found[match[1]] = max(found.get(match[1], 0), int(match[2]) + 1)
        return found

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]


_ELEMENT = re.compile(r"^model\.([A-Za-z_]\w*)\.(\d+)$")


def _split(chosen: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """Sampled values as recipe overrides and model options; ``model.OPTION.I`` elements become lists."""
    overrides = [(k, v) for k, v in chosen.items() if not k.startswith("model.")]
    model_kwargs: dict[str, Any] = {}
    elements: dict[str, dict[int, Any]] = {}
    for key, value in chosen.items():
        match = _ELEMENT.match(key)
        if match:
            elements.setdefault(match[1], {})[int(match[2])] = value
        elif key.startswith("model."):
            model_kwargs[key[len("model."):]] = value
    for option, items in elements.items():
        model_kwargs[option] = [items[i] for i in sorted(items)]
    return overrides, model_kwargs


def parse_objective(text: str) -> tuple[str, str]:
    """``"val_accuracy:max"`` -> ``("val_accuracy", "maximize")``; without ``:max``/``:min`` losses, errors,
    ``params`` and ``latency_ms`` are minimised and everything else maximised."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"objective {text!r}: expected METRIC or METRIC:max / METRIC:min, e.g. val_accuracy:max")
    metric, _, way = text.strip().partition(":")
    if way not in ("", "max", "min"):
        raise ConfigError(f"objective {text!r}: the direction must be max or min, got {way!r}")
    if not (metric.startswith("val_") or metric in MODEL_OBJECTIVES):
        raise ConfigError(f"objective {text!r}: expected a validation metric (val_accuracy, val_loss, val_<metric> "
                          f"the task reports) or one of {', '.join(MODEL_OBJECTIVES)}")
    if not way:
        lower = metric in MODEL_OBJECTIVES or "loss" in metric or "error" in metric
        way = "min" if lower else "max"
    return metric, "maximize" if way == "max" else "minimize"


# Reading and checking the file


def _recipe_fields() -> dict[str, tuple[Any, Any]]:
    """``section.key`` -> (type hint, value check) for every recipe field."""
    found = {}
    for section, tp in get_type_hints(Recipe).items():
        if not dataclasses.is_dataclass(tp):
            continue
        hints = get_type_hints(tp)
        for f in dataclasses.fields(tp):
            found[f"{section}.{f.name}"] = (hints[f.name], f.metadata.get("check"))
    return found


def _model_fields(model: str | None) -> dict[str, Any] | None:
    """Option name -> type hint of model ``model``'s constructor (``None``: options unchecked)."""
    if model is None:
        return None
    import inspect

    from dltricks.models._registry import model_entrypoint

    constructor = model_entrypoint(model)
    try:
        hints = get_type_hints(constructor)
    except (NameError, TypeError):
        hints = {}
    return {name: hints.get(name, Any) for name in inspect.signature(constructor).parameters
            if name not in ("num_classes", "in_chans")}


def _numeric_kind(tp: Any) -> str | None:
    """``"float"``, ``"int"`` or ``None`` for the type of a key (``X | None`` counts as ``X``)."""
    args = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) is not Literal else []
    if args and len(args) == 1:
        tp = args[0]
    return {float: "float", int: "int"}.get(tp) if isinstance(tp, type) else None


def _element_type(key: str, option: str, tp: Any) -> Any:
    """The type of one element of list option ``option`` (hint ``tp``): ``X`` of ``Sequence[X]``."""
    args = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) is not Literal else []
    if get_origin(tp) in (Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if tp is Any:
        return Any
    if get_origin(tp) not in (list, tuple, Sequence, abc.Sequence) and tp not in (list, tuple):
        raise ConfigError(f"space key {key}: option {option!r} is not a list ({_name(tp)}); "
                          f"write model.{option} without an index")
    items = [a for a in get_args(tp) if a is not Ellipsis]
    return items[0] if len(set(items)) == 1 else Any


def _type_for(key: str, model_hints: dict[str, Any] | None, recipe_fields: dict[str, tuple[Any, Any]]
              ) -> tuple[Any, Any]:
    element = _ELEMENT.match(key)
    if element:
        option = element[1]
        if model_hints is None:
            return Any, None
        if option not in model_hints:
            raise ConfigError(f"space key {key}: the model has no option {option!r}."
                              f"{did_you_mean(option, list(model_hints))} Options: {', '.join(model_hints)}")
        return _element_type(key, option, model_hints[option]), None
    if key.startswith("model."):
        option = key[len("model."):]
        if model_hints is None:
            return Any, None
        if option not in model_hints:
            raise ConfigError(f"space key {key}: the model has no option {option!r}."
                              f"{did_you_mean(option, list(model_hints))} Options: {', '.join(model_hints)}")
        return model_hints[option], None
    if key.startswith("data.") and key.count(".") == 1:
        return Any, None  # the data set's own options, checked when the task is built
    if key not in recipe_fields:
        keys = [row[0] for row in describe_recipe()]
        raise ConfigError(f"space key {key}: not a recipe key.{did_you_mean(key, keys)} Recipe keys are listed by "
                          "`dltricks train --recipe-help`; model options are written model.OPTION")
    return recipe_fields[key]


def _check_value(key: str, value: Any, tp: Any, check: Any) -> Any:
    value = coerce(value, tp, key=f"space key {key}")
    problem = check(value) if check is not None else None
    if problem:
        raise ConfigError(f"space key {key}: got {value!r}, expected {problem}")
    return value


def _range(key: str, kind: str, bounds: Any) -> tuple[Any, Any]:
    if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
        raise ConfigError(f"space key {key}: {kind} needs [low, high] numbers, got {bounds!r}")
    low, high = bounds
    if kind == "int" and not all(isinstance(b, int) for b in bounds):
        raise ConfigError(f"space key {key}: int needs integer bounds, got {bounds!r}")
    if low >= high:
        raise ConfigError(f"space key {key}: empty range [{low}, {high}]; expected low < high")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"space key {key}: log_uniform needs low > 0, got {low}")
    return low, high


def _parse_param(key: str, spec: Any, tp: Any, check: Any, earlier: dict[str, Param]) -> Param:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"space key {key}: expected a mapping such as {{log_uniform: [1.0e-4, 1.0]}}, got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    unknown = [k for k in spec if k not in KINDS and k not in _OPTIONS]
    if unknown or len(kinds) != 1:
        what = f"unknown entry {unknown[0]!r}" if unknown else f"{len(kinds)} distributions"
        raise ConfigError(f"space key {key}: {what}; expected exactly one of {', '.join(KINDS)} "
                          f"(with optional {', '.join(sorted(_OPTIONS))})")
    kind = kinds[0]
    numeric = _numeric_kind(tp)
    if kind in ("uniform", "log_uniform", "int") and tp is not Any and numeric is None:
        raise ConfigError(f"space key {key}: a {kind} distribution does not fit a key of type {_name(tp)}; "
                          "use choice: [...]")
    if kind in ("uniform", "log_uniform") and numeric == "int":
        raise ConfigError(f"space key {key}: the key is an integer; use int: [low, high] (log: true for a log "
                          f"scale) instead of {kind}")
    fields: dict[str, Any] = {"key": key, "kind": kind}
    if kind == "choice":
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"space key {key}: choice needs a non-empty list of values, got {choices!r}")
        fields["choices"] = tuple(_check_value(key, c, tp, check) for c in choices)
        fields["choices"] = tuple(list(c) if isinstance(c, tuple) else c for c in fields["choices"])
    else:
        low, high = _range(key, kind, spec[kind])
        _check_value(key, low, tp, check), _check_value(key, high, tp, check)
        fields.update(low=low, high=high, log=kind == "log_uniform" or bool(spec.get("log", False)))
        if "step" in spec:
            if kind != "int" or not isinstance(spec["step"], int) or spec["step"] < 1:
                raise ConfigError(f"space key {key}: step is for int distributions, a positive integer")
            fields["step"] = spec["step"]
    if "grid" in spec:
        if not isinstance(spec["grid"], list) or not spec["grid"]:
            raise ConfigError(f"space key {key}: grid needs a non-empty list of values")
        fields["grid_points"] = tuple(_check_value(key, g, tp, check) for g in spec["grid"])
    if "when" in spec:
        fields["when"] = _parse_when(key, spec["when"], earlier)
    return Param(**fields)


def _parse_when(key: str, when: Any, earlier: dict[str, Param]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(when, Mapping) or not when:
        raise ConfigError(f"space key {key}: when needs a mapping {{OTHER_KEY: value or [values]}}, got {when!r}")
    conditions = []
    for other, values in when.items():
        parent = earlier.get(other)
        if parent is None or parent.kind != "choice":
            raise ConfigError(f"space key {key}: condition on {other!r}, which is not a choice parameter of the space "
                              "(or the conditions form a cycle)")
        values = tuple(values) if isinstance(values, list) and not isinstance(parent.choices[0], list) else (values,)
        missing = [v for v in values if v not in parent.choices]
        if missing:
            raise ConfigError(f"space key {key}: condition {other}={missing[0]!r} is not among its choices "
                              f"{list(parent.choices)}")
        conditions.append((other, values))
    return tuple(conditions)


def _name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def load_space(source: str | Path | Mapping[str, Any], *, model: str | None = None,
               objectives: list[str] | None = None) -> SearchSpace:
    """Read and check a space (a YAML path or a mapping; see the module docstring).

    ``model``: the registered model whose options ``model.KEY`` names (checked against its constructor);
    ``objectives``: ``["val_accuracy:max", ...]`` that win over the file's.
    """
    data = load_yaml(source) if isinstance(source, (str, Path)) else dict(source)
    where = f"space {source}" if isinstance(source, (str, Path)) else "space"
    unknown = [k for k in data if k not in ("params", "objectives", "constraints")]
    if unknown or not isinstance(data.get("params"), Mapping) or not data["params"]:
        raise ConfigError(f"{where}: expected a mapping with `params:` (dotted keys -> distributions) and optional "
                          f"`objectives:` and `constraints:`{'; unknown entry ' + repr(unknown[0]) if unknown else ''}")
    recipe_fields, model_hints = _recipe_fields(), _model_fields(model)
    params: dict[str, Param] = {}
    pending = {str(k): v for k, v in data["params"].items()}
    while pending:
        # A conditional parameter comes after the choices it depends on, whatever the order of the file.
        ready = [k for k, v in pending.items() if not (isinstance(v, Mapping) and isinstance(v.get("when"), Mapping)
                                                       and any(str(o) in pending for o in v["when"]))]
        for key in ready or list(pending)[:1]:  # none ready: a cycle, which the first one's check reports
            tp, check = _type_for(key, model_hints, recipe_fields)
            params[key] = _parse_param(key, pending.pop(key), tp, check, params)
    _check_elements(params)
    given = objectives or data.get("objectives") or ["val_accuracy:max"]
    if not isinstance(given, list):
        raise ConfigError(f"{where}: objectives must be a list such as [val_accuracy:max, params:min]")
    parsed = tuple(parse_objective(o) for o in given)
    if len({m for m, _ in parsed}) != len(parsed):
        raise ConfigError(f"{where}: an objective is listed twice: {given}")
    return SearchSpace(tuple(params.values()), parsed, _parse_constraints(where, data.get("constraints")))


def _check_elements(params: Mapping[str, Param]) -> None:
    """``model.OPTION.I`` keys: indices 0..n-1 without gaps, never conditional, not mixed with ``model.OPTION``."""
    indices: dict[str, list[int]] = {}
    for key, param in params.items():
        match = _ELEMENT.match(key)
        if not match:
            continue
        if param.when:
            raise ConfigError(f"space key {key}: an element of a list option cannot have `when` (the list needs all "
                              "its elements); sample it always, the model ignores what a block does not use")
        indices.setdefault(match[1], []).append(int(match[2]))
    for option, found in indices.items():
        if f"model.{option}" in params:
            raise ConfigError(f"space key model.{option}: searched both whole and by element (model.{option}.I); "
                              "keep one")
        missing = sorted(set(range(max(found) + 1)) - set(found))
        if missing:
            raise ConfigError(f"space key model.{option}.{missing[0]}: missing; the elements of model.{option} must "
                              f"be numbered 0 to {max(found)} without gaps")


def _parse_constraints(where: str, given: Any) -> tuple[tuple[str, float], ...]:
    """``{params: 50000, latency_ms: 2.0}`` -> ``(("params", 50000.0), ...)``: upper limits, checked per trial."""
    if given is None:
        return ()
    if not isinstance(given, Mapping) or not given:
        raise ConfigError(f"{where}: constraints must be a mapping such as {{params: 50000, latency_ms: 2.0}}")
    found = []
    for name, limit in given.items():
        if name not in MODEL_OBJECTIVES:
            raise ConfigError(f"{where}: constraint {name!r}: expected one of {', '.join(MODEL_OBJECTIVES)}."
                              f"{did_you_mean(str(name), list(MODEL_OBJECTIVES))}")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise ConfigError(f"{where}: constraint {name}: got {limit!r}, expected an upper limit > 0")
        found.append((str(name), float(limit)))
    return tuple(found)
