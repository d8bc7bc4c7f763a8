"""Declaring a tip where its experiment is defined: :class:`Tip`, the :func:`tip` decorator, the registry.

A tip is a claim from the seed material (lecture, README, paper) together with an experiment
``fn(ctx: Context) -> Evidence``, a ``quick`` and a ``full`` setting, and a verdict rule
(:mod:`dltricks.evidence.rules`) written down *before* anything runs. It is declared by decorating its
experiment, the way a model constructor is registered where it is defined::

    @tip(id="conv.padding", title="Padding keeps size and borders", claim="...", source="the README",
         section="Convolutions", rule=Exact(checks=("padding keeps the spatial size", ...)),
         quick={"depth": 5, "size": 28}, full={"depth": 5, "size": 28}, seeds={"quick": 1, "full": 1},
         exercises=(nn.Conv2d,))
    def padding_border(ctx: Context) -> Evidence: ...

Everything a declaration refers to is a Python object, never a string path: the experiment is the
decorated function, and ``exercises`` lists the modules, functions and classes whose code the claim is
about. A tip's code (:func:`code_files`) is the source file of its experiment's module plus the files of
every exercised object: a module's file, every ``.py`` file below a package, the file of the module that
defines a function or class. The result cache hashes exactly these files. A missing object is an import
error of the experiment module; a decorated function that its module no longer holds under its name is
one of :func:`problems`; the catalog turns either into a :class:`~dltricks.errors.CatalogError`.

A tip that nobody has written an experiment for is declared as data, ``Tip(..., pending="what is
missing")``, and listed as "not yet tested".

Every tip of the catalog cites the seed material: ``cite=`` holds :class:`~dltricks.evidence.sources.Cite`
objects (document and lines, checked when declared, see :mod:`dltricks.evidence.sources`); ``source`` keeps
the papers and other references outside it. ``kind`` tells an experiment (``"experiment"``, the default)
from a *documentation check* (``"doc-check"``): a claim about what a document says, compared with the
other sources and the published work. A documentation check states its conclusion in ``finding``; its
experiment, if any, only records supporting facts, and the report shows it apart from the experiment
verdicts.

The registry keeps the tips each module declares, in the order they are written (stacked ``@tip``
decorators on one function included); :func:`declared_tips` reads them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, TypeVar

from dltricks.errors import CatalogError
from dltricks.evidence.core import Context, Evidence
from dltricks.evidence.rules import Rule
from dltricks.evidence.sources import Cite

__all__ = ["Tip", "Experiment", "tip", "declared_tips", "problems", "source_files", "code_files", "qualified_name",
           "KINDS", "EXPERIMENT", "DOC_CHECK"]

EXPERIMENT, DOC_CHECK = "experiment", "doc-check"
# Seeds per mode unless a tip says otherwise: 3 give quick mode an interval at all, 5 are what full mode needs to
# confirm or refute (dltricks.evidence.rules); exact, deterministic tips declare 1.
DEFAULT_SEEDS = {"quick": 3, "full": 5}
KINDS = (EXPERIMENT, DOC_CHECK)

Experiment = Callable[[Context], Evidence]
E = TypeVar("E", bound=Callable[..., Any])
_NO_SETTINGS: Mapping[str, Any] = MappingProxyType({})


@dataclass(eq=False)
class Tip:
    """One claim of the catalog.

    Attributes:
        id: stable identifier, ``section.short-name`` (e.g. ``conv.stacked-3x3``).
        title: a few words for tables.
        claim: the claim, in our words, in the direction the cited passage gives it.
        source: references outside the seed material (papers), "" when there are none.
        section: catalog section (Convolutions, Normalisation and optimisation, ...).
        rule: the verdict rule (fixed here, before running).
        experiment: the experiment function, or ``None`` when nobody has written one yet.
        exercises: modules, functions and classes whose code the claim is about; their source files are
            hashed into the cache key, so editing them re-runs the tip.
        pending: for a tip without an experiment, what is missing (shown as "not implemented yet").
        quick, full: settings passed to the experiment (``ctx.settings``); ``quick=None`` marks a tip that
            needs more compute than quick mode allows (it is reported as skipped there).
        seeds: default number of seeds per mode.
        metrics: metric names the experiment reports, with a one-line meaning each.
        budget_s: planned wall time of the quick setting on one core (documentation; the report shows
            the measured time next to it).
        cite: the passages of the seed material the claim comes from (document and lines); every tip of
            the catalog has at least one.
        kind: ``"experiment"`` or ``"doc-check"`` (a documentation check, see the module docstring).
        finding: a documentation check's conclusion, with the passages it rests on.
        may_fail: arms whose failure to train (divergence, chance level) is what the claim predicts, not a
            broken setup (the unclipped arm of gradient clipping); every other arm with a health problem
            makes the verdict ``invalid setup`` (see :func:`dltricks.evidence.rules.setup_problems`).
        shares: tips with the same non-empty key share memoised runs and run in one worker process.
        gpu: why the full setting needs a GPU (empty when it runs on CPUs); such a tip is skipped by a full
            run on a CPU, and run by ``dltricks verify --full --device cuda``.
        larger_runs: the repository's larger runs of the same question, each ``"docs/PAGE.md#anchor: what it
            is"`` (the report links them; a test checks that every page and heading exists).
    """

    id: str
    title: str
    claim: str
    source: str
    section: str
    rule: Rule
    experiment: Experiment | None = None
    exercises: tuple[Any, ...] = ()
    pending: str = ""
    quick: dict[str, Any] | None = field(default_factory=dict)
    full: dict[str, Any] = field(default_factory=dict)
    seeds: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SEEDS))
    metrics: Mapping[str, str] = field(default_factory=dict)
    budget_s: float = 5.0
    cite: tuple[Cite, ...] = ()
    kind: str = EXPERIMENT
    finding: str = ""
    may_fail: tuple[str, ...] = ()
    shares: str = ""
    larger_runs: tuple[str, ...] = ()
    gpu: str = ""

    def __post_init__(self) -> None:
        self.exercises = tuple(self.exercises)
        self.cite = (self.cite,) if isinstance(self.cite, Cite) else tuple(self.cite)
        for c in self.cite:
            if not isinstance(c, Cite):
                raise CatalogError(f"tip {self.id}: cite holds {c!r}; expected Cite objects, e.g. README.at(21, 23)")
        for obj in self.exercises:
            if not _exercisable(obj):
                raise CatalogError(f"tip {self.id}: exercises holds {obj!r} ({type(obj).__name__}); expected "
                                   f"modules, functions or classes")

    def settings(self, mode: str) -> dict[str, Any] | None:
        """The settings of ``mode``; ``None`` when the tip has no meaningful setting there (full-mode only)."""
        chosen = self.quick if mode == "quick" else self.full
        return None if chosen is None else dict(chosen)

    def default_seeds(self, mode: str) -> int:
        return int(self.seeds.get(mode, DEFAULT_SEEDS.get(mode, 3)))

    def missing(self) -> list[str]:
        """What keeps this tip from running: empty for a tip with an experiment."""
        if self.experiment is not None:
            return []
        return [self.pending or "no experiment written yet"]

    @property
    def implemented(self) -> bool:
        return self.experiment is not None

    @property
    def status(self) -> str:
        """``"implemented"``, ``"doc-check"`` or ``"not yet tested"``: how ``dltricks tips`` counts the tip."""
        if self.kind == DOC_CHECK:
            return DOC_CHECK
        return "implemented" if self.implemented else "not yet tested"

    @property
    def reference(self) -> str:
        """The cited passages (``file:lines (document: topic)``), then the other references."""
        return "; ".join([str(c) for c in self.cite] + ([self.source] if self.source else []))

    @property
    def experiment_name(self) -> str:
        """``module.function`` of the experiment ("" without one)."""
        return qualified_name(self.experiment) if self.experiment is not None else ""

    def exercise_names(self) -> list[str]:
        return [qualified_name(obj) for obj in self.exercises]


def qualified_name(obj: Any) -> str:
    """``pkg.module`` for a module, ``pkg.module.Name`` for a function or class."""
    if inspect.ismodule(obj):
        return obj.__name__
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _exercisable(obj: Any) -> bool:
    return inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)


# ------------------------------------------------------------------------------------------------ registry
_DECLARED: dict[str, list[Tip]] = {}


def _register(new: Tip) -> None:
    fn = new.experiment
    assert fn is not None
    tips = _DECLARED.setdefault(fn.__module__, [])
    for old in list(tips):
        if old.id != new.id:
            continue
        if getattr(old.experiment, "__qualname__", None) != fn.__qualname__:
            raise CatalogError(f"tip {new.id} is declared twice in {fn.__module__} (on {old.experiment_name} and "
                               f"{qualified_name(fn)})")
        tips.remove(old)  # the module was imported again (importlib.reload): the new declaration wins
    # Stacked decorators run from the bottom up: put this tip before those already declared on the same
    # function, so that the tips keep the order in which they are written.
    first = next((i for i, old in enumerate(tips) if old.experiment is fn), len(tips))
    tips.insert(first, new)


def tip(*, id: str, title: str, claim: str, section: str, rule: Rule,  # noqa: A002
        source: str = "", exercises: Sequence[Any] = (), quick: Mapping[str, Any] | None = _NO_SETTINGS,
        full: Mapping[str, Any] = _NO_SETTINGS, seeds: Mapping[str, int] | None = None,
        metrics: Mapping[str, str] | None = None, budget_s: float = 5.0, kind: str = EXPERIMENT,
        cite: Sequence[Cite] | Cite = (), finding: str = "", may_fail: Sequence[str] = (),
        shares: str = "", larger_runs: Sequence[str] = (), gpu: str = "") -> Callable[[E], E]:
    """Declare the decorated function as the experiment of tip ``id`` (see the module docstring).

    Returns the function unchanged; stack several ``@tip`` on one experiment that tests several claims.
    """

    def declare(fn: E) -> E:
        if not inspect.isfunction(fn):
            raise CatalogError(f"@tip(id={id!r}) decorates {fn!r}; expected a function fn(ctx) -> Evidence")
        _register(Tip(id=id, title=title, claim=claim, source=source, section=section, rule=rule, experiment=fn,
                      exercises=tuple(exercises), quick=None if quick is None else dict(quick), full=dict(full),
                      seeds=dict(seeds) if seeds is not None else dict(DEFAULT_SEEDS),
                      metrics=dict(metrics or {}), budget_s=budget_s, cite=cite, kind=kind, finding=finding,
                      may_fail=tuple(may_fail), shares=shares, larger_runs=tuple(larger_runs), gpu=gpu))
        return fn

    return declare


def declared_tips(module: ModuleType) -> list[Tip]:
    """The tips declared by ``module``'s experiments, in the order they are written."""
    return list(_DECLARED.get(module.__name__, ()))


# ------------------------------------------------------------------------------------------------ code of a tip
def source_files(obj: Any) -> dict[str, Path]:
    """The source files of ``obj`` by a location-independent label (``dltricks/layers/conv.py``).

    A module gives its file, a package every ``.py`` file below it, a function or class the file of the
    module that defines it. ``{}`` when there is no file (a built-in module).
    """
    if not _exercisable(obj):
        raise CatalogError(f"{obj!r} is not a module, function or class, so it has no source files")
    module = obj if inspect.ismodule(obj) else sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is None:
        return {}
    label = module.__name__.replace(".", "/")
    if obj is module and hasattr(module, "__path__"):  # a package: every source file below it
        files = {}
        for location in module.__path__:
            for path in sorted(Path(location).rglob("*.py")):
                if "__pycache__" not in path.parts:
                    files[f"{label}/{path.relative_to(location).as_posix()}"] = path
        return files
    file = getattr(module, "__file__", None)
    if not file:
        return {}
    path = Path(file)
    return {(f"{label}/{path.name}" if path.stem == "__init__" else f"{label}{path.suffix}"): path}


def code_files(t: Tip) -> dict[str, Path]:
    """The files that make up tip ``t``'s code: its experiment's module and every exercised object's files."""
    files: dict[str, Path] = {}
    for obj in ((t.experiment,) if t.experiment is not None else ()) + t.exercises:
        files.update(source_files(obj))
    return dict(sorted(files.items()))


def _resolve(fn: Callable[..., Any]) -> Any:
    """What ``fn``'s module holds under ``fn``'s qualified name now (None when nothing)."""
    obj: Any = sys.modules.get(fn.__module__)
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
    while obj is not None and obj is not fn and hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return obj


def problems(t: Tip) -> list[str]:
    """What is wrong with the declaration of ``t`` (empty when it resolves).

    An implemented tip's experiment must be what its module holds under its name (a renamed or removed
    function is reported), and its experiment and every exercised object must map to existing source
    files. A tip without an experiment must say what is missing. Every tip must cite the seed material
    (the cites themselves are checked when they are made), have a known ``kind``, and a documentation
    check must state its ``finding``.
    """
    found = []
    if not t.cite:
        found.append("cites no passage of the seed material (cite=README.at(first, last, topic), see "
                     "dltricks.evidence.sources)")
    if t.kind not in KINDS:
        found.append(f"unknown kind {t.kind!r} (kinds: {', '.join(KINDS)})")
    elif t.kind == DOC_CHECK and not t.finding:
        found.append("a documentation check without a `finding` saying what the documents show")
    if t.experiment is None:
        if not t.pending:
            found.append("no experiment and no `pending` reason saying what is missing")
        return found
    if not callable(t.experiment):
        return [f"experiment {t.experiment!r} is not callable"]
    if _resolve(t.experiment) is not t.experiment:
        found.append(f"experiment {t.experiment_name} cannot be resolved: module {t.experiment.__module__} holds no "
                     f"such function (renamed or removed?)")
    for obj in (t.experiment, *t.exercises):
        files = source_files(obj)
        if not files:
            found.append(f"{qualified_name(obj)} has no source file")
        found += [f"{qualified_name(obj)}: source file {path} does not exist" for path in files.values()
                  if not path.is_file()]
    for name in ("decide", "describe", "brief"):
        if not callable(getattr(t.rule, name, None)):
            found.append(f"rule {t.rule!r} has no {name}()")
    return found
