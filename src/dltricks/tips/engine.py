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
from dltricks.evidence import Context, Evidence, RuleError, Tip, Verdict, seed_list
from dltricks.tips import cache

__all__ = ["TipResult", "select_tips", "run_tip", "run_tips"]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TipResult:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


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
    return {"id": tip.id, "title": tip.title, "claim": tip.claim, "source": tip.source, "section": tip.section,
            "rule": tip.rule.describe(), "mode": mode, "exercises": tip.exercise_names(), "budget_s": tip.budget_s}


def run_tip(tip: Tip, *, mode: str, seeds: int | None = None, cache_dir: Path, use_cache: bool = True,
            note: Callable[[str], None] = lambda s: None,
            settings: dict[str, Any] | None = None) -> tuple[TipResult, Path | None]:
    """Run (or load) one tip. Returns the result and the folder holding its plots (None if none)."""
    if tip.experiment is None:
        missing = tip.missing()
        return TipResult(**_base(tip, mode), verdict=Verdict.NOT_IMPLEMENTED.value, status="not implemented yet",
                         reason="missing: " + "; ".join(missing), missing=missing), None
    settings = tip.settings(mode) if settings is None else dict(settings)
    if settings is None:
        return TipResult(**_base(tip, mode), verdict=Verdict.SKIPPED.value,
                         reason=f"no {mode}-mode setting: this experiment needs more compute; run `dltricks verify "
                                f"--full --only {tip.id}`"), None
    seed_values = seed_list(seeds if seeds is not None else tip.default_seeds(mode))
    key = cache.cache_key(tip, mode, settings, seed_values)
    if use_cache:
        stored = cache.load(cache_dir, tip.id, key)
        if stored is not None:
            result = TipResult.from_dict(stored)
            result.cached = True
            return result, cache.entry_dir(cache_dir, tip.id, key)
    workdir = cache.new_workdir(cache_dir, tip.id)
    ctx = Context(tip_id=tip.id, mode=mode, settings=settings, seeds=seed_values, workdir=workdir, report=note)
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    try:
        evidence = tip.experiment(ctx)
        if not isinstance(evidence, Evidence):
            raise RuleError(f"experiment {tip.experiment_name} returned {type(evidence).__name__}, expected Evidence")
        decision = tip.rule.decide(evidence, mode)
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
                       elapsed_s=round(elapsed, 3), cpu_s=round(cpu, 3), key=key)
    entry = cache.store(cache_dir, tip.id, key, workdir, result.to_dict())
    return result, entry


def run_tips(tips: Sequence[Tip], *, mode: str, seeds: int | None = None, out: Path, cache_dir: Path | None = None,
             use_cache: bool = True, progress: bool | None = None) -> list[TipResult]:
    """Run ``tips`` with a progress bar; copy their plots to ``out/plots/<id>/``. Returns the results."""
    from dltricks.utils.io import atomic_write_bytes
    from dltricks.utils.progress import ProgressBar

    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.cache_root(out)
    results: list[TipResult] = []
    with ProgressBar(len(tips), f"verify --{mode}", enabled=progress) as bar:
        for tip in tips:
            bar.set_description(f"{tip.id}")
            result, entry = run_tip(tip, mode=mode, seeds=seeds, cache_dir=cache_dir, use_cache=use_cache,
                                    note=lambda s, _id=tip.id: bar.set_description(f"{_id}: {s}"))
            if entry is not None:
                copied = []
                for name in result.plots:
                    rel = Path("plots") / tip.id / name
                    atomic_write_bytes(out / rel, (entry / name).read_bytes())
                    copied.append(rel.as_posix())
                result.plots = copied
            results.append(result)
            bar.advance(1, last=f"{tip.id}: {result.verdict}")
    return results
