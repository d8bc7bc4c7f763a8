"""Run tips, decide verdicts, cache results.

:func:`run_tips` is what ``dltricks verify`` calls: for each selected tip it either reports "not
implemented yet" (naming what is missing), reuses a cached result whose key matches, or runs the
experiment in a fresh work folder, applies the tip's rule and stores the result. An experiment that
raises is reported as ``error`` with its message and is not cached; one that cannot find its data set
(:class:`~dltricks.errors.DataError`), or a tip without a setting for the mode, is ``skipped``.
:func:`select_tips` resolves ``--only`` (ids, ``section.*`` globs or section names) and rejects unknown ids
with suggestions.
"""

from __future__ import annotations

import fnmatch
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dltricks.errors import ConfigError, DataError, did_you_mean
from dltricks.evidence import (DOC_CHECK, Context, Decision, Evidence, RuleError, Tip, Verdict, seed_list,
                               setup_problems)
from dltricks.evidence import stats as st
from dltricks.evidence.rules import combine
from dltricks.tips import cache

__all__ = ["TipResult", "select_tips", "run_tip", "run_tips", "family_control", "STATISTICAL_KINDS"]

# Kinds of rule parts (``TipResult.stats``) decided by an interval test, which family_control corrects.
STATISTICAL_KINDS = ("effect", "non-inferiority", "equivalence")


@dataclass
class TipResult:
    """Everything the report shows about one tip (also the rows of ``results.json``)."""

    id: str
    title: str
    claim: str
    source: str
    section: str
    verdict: str
    reason: str
    rule: str
    mode: str
    status: str = "implemented"
    kind: str = "experiment"  # or "doc-check": a documentation check, reported apart from the experiment verdicts
    seeds: list[int] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    exercises: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    stats: list[dict[str, Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    budget_s: float = 0.0
    cached: bool = False
    key: str = ""
    missing: list[str] = field(default_factory=list)
    error: str = ""
    may_fail: list[str] = field(default_factory=list)
    setup_problems: list[str] = field(default_factory=list)
    # The stored full-mode verdict of this tip (dltricks.tips.stored), attached by verify after the run:
    # verdict, seeds, date, commit, machine, wall_s, stale, and "disagrees" with this run's verdict.
    stored_full: dict[str, Any] = field(default_factory=dict)
    larger_runs: list[str] = field(default_factory=list)  # "docs/PAGE.md#anchor: what it is"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TipResult:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def checked(cls, data: dict[str, Any]) -> TipResult:
        """:meth:`from_dict` for data from a file (the cache): every field must have its declared type; a
        :class:`~dltricks.errors.ConfigError` (a ``ValueError``) names the first that does not."""
        from typing import get_type_hints

        from dltricks.config import coerce

        hints = get_type_hints(cls)
        values = {name: coerce(value, hints[name], key=f"cached result {name}")
                  for name, value in data.items() if name in hints}
        return cls(**values)  # a missing required field is a TypeError


def select_tips(catalog: Sequence[Tip], only: Iterable[str] | None) -> list[Tip]:
    """Tips matching ``only`` (ids, globs like ``conv.*``, or section names), catalog order kept."""
    if not only:
        return list(catalog)
    ids = [t.id for t in catalog]
    sections = {t.section.lower() for t in catalog}
    wanted: set[str] = set()
    for raw in only:
        for item in (s.strip() for s in raw.split(",")):
            if not item:
                continue
            matches = [t.id for t in catalog if fnmatch.fnmatchcase(t.id, item) or t.section.lower() == item.lower()]
            if not matches:
                raise ConfigError(f"unknown tip {item!r}.{did_you_mean(item, ids)} "
                                  f"Run `dltricks tips` for the catalog ({len(ids)} tips; sections: "
                                  f"{', '.join(sorted(sections))}).")
            wanted.update(matches)
    return [t for t in catalog if t.id in wanted]


def _base(tip: Tip, mode: str) -> dict[str, Any]:
    return {"id": tip.id, "title": tip.title, "claim": tip.claim, "source": tip.reference, "section": tip.section,
            "kind": tip.kind, "rule": tip.rule.describe(), "mode": mode, "exercises": tip.exercise_names(),
            "budget_s": tip.budget_s, "larger_runs": list(tip.larger_runs)}


def run_tip(tip: Tip, *, mode: str, seeds: int | None = None, cache_dir: Path, use_cache: bool = True,
            note: Callable[[str], None] = lambda s: None, settings: dict[str, Any] | None = None,
            first_seed: int = 0, device: str = "cpu") -> tuple[TipResult, Path | None]:
    """Run (or load) one tip. Returns the result and the folder holding its plots (None if none).

    Before the rule, the setup check (:func:`dltricks.evidence.setup_problems`): an arm that had to train and
    did not makes the verdict ``invalid setup``, and the rule is not applied.
    """
    if tip.experiment is None:
        missing = tip.missing()
        return TipResult(**_base(tip, mode), verdict=Verdict.NOT_TESTED.value, status="not yet tested",
                         reason="missing: " + "; ".join(missing), missing=missing), None
    settings = tip.settings(mode) if settings is None else dict(settings)
    if settings is None:
        return TipResult(**_base(tip, mode), verdict=Verdict.SKIPPED.value,
                         reason=f"no {mode}-mode setting: this experiment needs more compute; run `dltricks verify "
                                f"--full --only {tip.id}`"), None
    if mode == "full" and tip.gpu and device == "cpu":
        return TipResult(**_base(tip, mode), verdict=Verdict.SKIPPED.value,
                         reason=f"needs a GPU in full mode ({tip.gpu}); run `dltricks verify --full --only {tip.id} "
                                f"--device cuda` on a machine with one"), None
    seed_values = seed_list(seeds if seeds is not None else tip.default_seeds(mode), start=first_seed)
    key = cache.cache_key(tip, mode, settings, seed_values, device)
    if use_cache:
        result = cache.load(cache_dir, tip.id, key, parse=TipResult.checked)  # a malformed entry is discarded
        if result is not None:
            result.cached = True
            return result, cache.entry_dir(cache_dir, tip.id, key)
    workdir = cache.new_workdir(cache_dir, tip.id)
    ctx = Context(tip_id=tip.id, mode=mode, settings=settings, seeds=seed_values, workdir=workdir, report=note,
                  device=device)
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    try:
        evidence = tip.experiment(ctx)
        if not isinstance(evidence, Evidence):
            raise RuleError(f"experiment {tip.experiment_name} returned {type(evidence).__name__}, expected Evidence")
        problems = setup_problems(evidence, tip.rule, may_fail=tip.may_fail, seeds=seed_values)
        if problems:
            decision = Decision(Verdict.INVALID_SETUP, "setup check failed, nothing compared: " + "; ".join(problems))
        else:
            decision = tip.rule.decide(evidence, mode)
        if tip.kind == DOC_CHECK:  # the documents decide; the measured facts only support the finding
            decision = Decision(Verdict.DOC_CHECK, f"{tip.finding} Supporting facts: {decision.reason}", decision.stats)
    except DataError as err:  # a data set that is not on this machine: nothing was measured
        shutil.rmtree(workdir, ignore_errors=True)
        return TipResult(**_base(tip, mode), verdict=Verdict.SKIPPED.value, reason=f"data missing: {err}",
                         seeds=seed_values, settings=settings, key=key), None
    except Exception as err:  # an experiment bug must not stop the other tips
        shutil.rmtree(workdir, ignore_errors=True)
        return TipResult(**_base(tip, mode), verdict=Verdict.ERROR.value, reason=f"{type(err).__name__}: {err}",
                         seeds=seed_values, settings=settings, key=key, elapsed_s=time.perf_counter() - start,
                         error="".join(traceback.format_exception(err))[-4000:]), None
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    plots = [p for p in evidence.plots if (workdir / p).is_file()]
    result = TipResult(**_base(tip, mode), verdict=decision.verdict.value, reason=decision.reason, seeds=seed_values,
                       settings=settings, evidence=evidence.to_dict(), stats=decision.stats, plots=plots,
                       elapsed_s=round(elapsed, 3), cpu_s=round(cpu, 3), key=key, may_fail=list(tip.may_fail),
                       setup_problems=problems)
    entry = cache.store(cache_dir, tip.id, key, workdir, result.to_dict())
    return result, entry


def _copy_plots(result: TipResult, entry: Path | None, out: Path) -> None:
    from dltricks.utils.io import atomic_write_bytes

    if entry is None:
        return
    copied = []
    for name in result.plots:
        rel = Path("plots") / result.id / name
        atomic_write_bytes(out / rel, (entry / name).read_bytes(), mode=0o644)
        copied.append(rel.as_posix())
    result.plots = copied


def run_tips(tips: Sequence[Tip], *, mode: str, seeds: int | None = None, out: Path, cache_dir: Path | None = None,
             use_cache: bool = True, progress: bool | None = None, workers: int = 1,
             first_seed: int = 0, device: str = "cpu") -> list[TipResult]:
    """Run ``tips`` with a progress bar; copy their plots to ``out/plots/<id>/``. Returns the results in the order
    of ``tips``.

    ``workers > 1`` runs catalog tips in that many worker processes (:func:`_run_group`): tips with the same
    ``shares`` key go to one worker (they share memoised runs), the costliest groups (by ``budget_s``) first.
    """
    from dltricks.utils.progress import ProgressBar

    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.cache_root(out)
    if workers > 1 and len(tips) > 1 and _all_in_catalog(tips):
        return _run_pool(tips, mode=mode, seeds=seeds, out=out, cache_dir=cache_dir, use_cache=use_cache,
                         progress=progress, workers=workers, first_seed=first_seed, device=device)
    results: list[TipResult] = []
    with ProgressBar(len(tips), f"verify --{mode}", enabled=progress) as bar:
        for tip in tips:
            bar.set_description(f"{tip.id}")
            result, entry = run_tip(tip, mode=mode, seeds=seeds, cache_dir=cache_dir, use_cache=use_cache,
                                    note=lambda s, _id=tip.id: bar.set_description(f"{_id}: {s}"),
                                    first_seed=first_seed, device=device)
            _copy_plots(result, entry, out)
            results.append(result)
            bar.advance(1, last=f"{tip.id}: {result.verdict}")
    return results


def _all_in_catalog(tips: Sequence[Tip]) -> bool:
    """Whether every tip is the catalog's own object (a worker process can rebuild only those by id)."""
    from dltricks.tips.catalog import get_catalog

    catalog = {t.id: t for t in get_catalog()}
    return all(catalog.get(t.id) is t for t in tips)


def _groups(tips: Sequence[Tip]) -> list[list[Tip]]:
    """Tips that share memoised runs (same ``shares`` key) in one group; the costliest groups first."""
    groups: dict[str, list[Tip]] = {}
    for tip in tips:
        groups.setdefault(tip.shares or f"tip:{tip.id}", []).append(tip)
    return sorted(groups.values(), key=lambda g: -sum(t.budget_s for t in g))


def _run_group(ids: list[str], mode: str, seeds: int | None, first_seed: int, cache_dir: str, use_cache: bool,
               threads: int, device: str = "cpu") -> list[tuple[dict[str, Any], str | None]]:
    """Worker process: rebuild the catalog, run the tips ``ids`` one after the other."""
    torch.set_num_threads(threads)
    from dltricks.tips.catalog import get_catalog

    by_id = {t.id: t for t in get_catalog()}
    done = []
    for tip_id in ids:
        result, entry = run_tip(by_id[tip_id], mode=mode, seeds=seeds, cache_dir=Path(cache_dir), use_cache=use_cache,
                                first_seed=first_seed, device=device)
        done.append((result.to_dict(), None if entry is None else str(entry)))
    return done


def _run_pool(tips: Sequence[Tip], *, mode: str, seeds: int | None, out: Path, cache_dir: Path, use_cache: bool,
              progress: bool | None, workers: int, first_seed: int, device: str = "cpu") -> list[TipResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from dltricks.utils.progress import ProgressBar

    by_id: dict[str, TipResult] = {}
    threads = torch.get_num_threads()
    context = multiprocessing.get_context("spawn")  # no fork of a process that has started torch's thread pools
    with ProgressBar(len(tips), f"verify --{mode} ({workers} workers)", enabled=progress) as bar, \
            ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_run_group, [t.id for t in group], mode, seeds, first_seed, str(cache_dir), use_cache,
                               threads, device): group for group in _groups(tips)}
        for future in as_completed(futures):
            group = futures[future]
            try:
                done = future.result()
            except Exception as err:  # a worker that died (out of memory, killed) fails its tips, not the run
                done = [(TipResult(**_base(t, mode), verdict=Verdict.ERROR.value,
                                   reason=f"worker process failed: {type(err).__name__}: {err}").to_dict(), None)
                        for t in group]
            for data, entry in done:
                result = TipResult.from_dict(data)
                _copy_plots(result, None if entry is None else Path(entry), out)
                by_id[result.id] = result
                bar.advance(1, last=f"{result.id}: {result.verdict}")
    return [by_id[t.id] for t in tips]


def family_control(results: Sequence[TipResult], *, mode: str, alpha: float = st.ALPHA) -> dict[str, Any]:
    """Holm's correction over the statistical parts of every tip in ``results``; returns what was applied.

    Full mode: each part decided by an interval test (:data:`STATISTICAL_KINDS`) of a tip that was compared
    (not invalid setup, error, skipped) has ``p = 2 min(p_support, p_contradict)``; Holm's step-down
    procedure keeps the family-wise error rate of all confirmed and refuted parts at ``alpha``. A confirmed or
    refuted part whose adjusted p-value exceeds ``alpha`` becomes inconclusive and its tip's verdict is
    recombined from its parts (:func:`dltricks.evidence.rules.combine`). The results are changed in place; the
    adjusted p-value is stored in each part (``p_holm``). Quick mode applies no correction: its verdicts are
    capped at "consistent with" and rest on one 95 % interval per part.
    """
    compared = {Verdict.CONFIRMED.value, Verdict.REFUTED.value, Verdict.CONSISTENT.value,
                Verdict.NOT_CONSISTENT.value, Verdict.INCONCLUSIVE.value}
    parts = [(r, part) for r in results if r.verdict in compared for part in r.stats
             if part.get("kind") in STATISTICAL_KINDS and "p" in part]
    statement = {"method": "Holm step-down over the statistical parts of the tips in this run", "alpha": alpha,
                 "tests": len(parts), "mode": mode, "changed": []}
    if mode != "full":
        statement["method"] = ("none in quick mode: one 95 % interval per part; verdicts capped at 'consistent "
                               "with'; full mode applies Holm's correction across the catalog")
        return statement
    adjusted = st.holm([part["p"] for _, part in parts])
    touched: dict[str, TipResult] = {}
    for (result, part), p_holm in zip(parts, adjusted):
        part["p_holm"], part["family_size"] = p_holm, len(parts)
        if part.get("verdict") in (Verdict.CONFIRMED.value, Verdict.REFUTED.value) and p_holm > alpha:
            part["verdict"], part["holm_downgraded"] = Verdict.INCONCLUSIVE.value, True
            touched[result.id] = result
    for result in touched.values():
        verdict = combine([Verdict(part["verdict"]) for part in result.stats if "verdict" in part]).value
        weak = [part["metric"] for part in result.stats if part.get("holm_downgraded")]
        result.reason += (f"; after Holm's correction over {len(parts)} tests ({', '.join(weak)}: adjusted p > "
                          f"{alpha:g}) the verdict is {verdict}, not {result.verdict}")
        statement["changed"].append(f"{result.id}: {result.verdict} -> {verdict}")
        result.verdict = verdict
    return statement
