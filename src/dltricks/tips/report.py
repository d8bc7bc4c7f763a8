"""The evidence report: ``results.json``, ``index.html`` (template ``report.html``) and a rich table.

``index.html`` starts with a summary table (one row per tip, a verdict badge, the key numbers) and
then one section per tip: claim, source, the rule fixed before running, the setup with its budget (steps,
images, epochs per run, number of runs, wall and CPU time), the learning rate each arm's grid chose, every
arm's numbers as mean +- std (n seeds), and for each statistical part of the rule the per-seed values of
both arms and their paired differences (an inline SVG), the effect with its 95 % Student-t interval, n and
degrees of freedom, the p-values (Holm-adjusted in full mode), the minimum detectable effect and the seeds
it would take to decide; then exact checks, other measured values and the plots (PNG files under
``plots/<tip id>/``, next to ``index.html``). Every file is written with mode 0644.
"""

from __future__ import annotations

import html
import math
import platform
import string
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from dltricks.tips.engine import TipResult
from dltricks.utils.io import atomic_write_json, atomic_write_text

__all__ = ["write_report", "render_html", "summary_table", "key_numbers", "machine_info"]

VERDICT_ORDER = ["confirmed", "consistent with", "inconclusive", "not consistent with", "refuted", "invalid setup",
                 "error", "skipped", "documentation check", "not yet tested"]
STATISTICAL = ("effect", "non-inferiority", "equivalence")
PUBLIC = 0o644  # report files are read by people and web servers
RICH_STYLE = {"confirmed": "bold white on green", "consistent with": "green", "refuted": "bold white on red",
              "not consistent with": "dark_orange", "inconclusive": "grey62", "not yet tested": "dim",
              "skipped": "dim", "error": "bold magenta", "documentation check": "cyan", "invalid setup": "bold yellow"}
# The summary lists the experiments, then the documentation checks, then the topics not yet tested, apart.
GROUPS = (("experiments", "Experiments"), ("doc-check", "Documentation checks (not experiments)"),
          ("not yet tested", "Not yet tested (no experiment yet)"))


def group_of(r: TipResult) -> str:
    """``"doc-check"``, ``"not yet tested"`` or ``"experiments"``: the part of the summary a result is listed in."""
    if r.kind == "doc-check":
        return "doc-check"
    return "not yet tested" if r.verdict == "not yet tested" else "experiments"


def grouped(results: Sequence[TipResult]) -> list[tuple[str, list[TipResult]]]:
    """The non-empty groups of :data:`GROUPS` with their results, catalog order kept inside each."""
    return [(title, members) for key, title in GROUPS
            if (members := [r for r in results if group_of(r) == key])]


def machine_info() -> dict[str, Any]:
    import os

    from dltricks import __version__

    return {"dltricks": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, "
                       f"torch threads {torch.get_num_threads()}",
            "cuda": torch.cuda.is_available()}


def _num(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.3e}"
        return f"{x:.4g}"
    return str(x)


def _pm(s: dict[str, Any]) -> str:
    if s["n"] == 1:
        return f"{_num(s['mean'])} (n=1)"
    return f"{_num(s['mean'])} &plusmn; {_num(s['std'])} (n={s['n']})"


def key_numbers(result: TipResult, *, plain: bool = False) -> str:
    """One line with the numbers that decided the verdict."""
    parts = [result.evidence["headline"]] if (result.evidence or {}).get("headline") else []
    if result.verdict == "invalid setup":
        parts.append(result.reason)
    for st in result.stats:
        if st.get("kind") in STATISTICAL:
            e = st["effect"]
            t, c = st["treatment_stats"], st["control_stats"]
            parts.append(f"{st['metric']}: {st['treatment']} {_num(t['mean'])} vs {st['control']} {_num(c['mean'])}; "
                         f"effect {_num(e['mean'])}, {_ci(e)} (n={e['n']})")
        elif st.get("kind") == "exact":
            checks = st["checks"]
            failed = [name for name, ok in checks.items() if not ok]
            parts.append(f"{sum(checks.values())}/{len(checks)} exact checks hold"
                         + (f" (fails: {'; '.join(failed)})" if failed else ""))
    if not parts and result.missing:
        parts.append("missing: " + "; ".join(m.split(" (")[0] for m in result.missing))
    if not parts and (result.error or result.verdict == "skipped"):
        parts.append(result.reason)
    text = "; ".join(parts)
    return text if plain else html.escape(text).replace("&amp;plusmn;", "&plusmn;")


def _ci(e: dict[str, Any]) -> str:
    """``95% CI [lo, hi]`` of an interval dict (``no interval`` with one seed)."""
    if e.get("lo") is None or e.get("hi") is None:
        return "no interval"
    return f"{round(100 * e.get('confidence', 0.95))}% CI [{_num(e['lo'])}, {_num(e['hi'])}]"


def _strip_svg(rows: Sequence[tuple[str, Sequence[float]]], *, interval: tuple[float, float] | None = None,
               lines: Sequence[tuple[float, str]] = (), width: int = 420) -> str:
    """An inline SVG strip plot: one row of dots (one per seed) per ``(label, values)``; on the last row an
    optional interval bar; ``lines``: vertical reference lines ``(x, label)`` (zero, the claim's bound)."""
    finite = [v for _, vals in rows for v in vals if math.isfinite(v)]
    finite += [x for x, _ in lines] + (list(interval) if interval else [])
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * 0.08 or max(abs(lo), 1e-9) * 0.1
    lo, hi = lo - pad, hi + pad
    left, right, row_h, top = 120, width - 10, 18, 14
    height = row_h * len(rows) + top + 16
    x = lambda v: left + (v - lo) / (hi - lo) * (right - left)  # noqa: E731
    e = html.escape
    out = [f'<svg class="strip" width="{width}" height="{height}" role="img" viewBox="0 0 {width} {height}">']
    labelled: list[float] = []
    for value, label in sorted(lines, key=lambda line: line[0]):  # reference lines, labelled above the rows
        out.append(f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{top - 2}" y2="{height - 16}" class="ref"/>')
        if all(abs(x(value) - other) > 60 for other in labelled):  # no overlapping labels
            out.append(f'<text x="{x(value):.1f}" y="{top - 4}" class="tick mid">{e(label)}</text>')
            labelled.append(x(value))
    for i, (label, values) in enumerate(rows):
        y = top + 8 + i * row_h
        out.append(f'<text x="{left - 6}" y="{y + 4}" class="lab">{e(label)}</text>')
        if interval is not None and i == len(rows) - 1:
            out.append(f'<line x1="{x(interval[0]):.1f}" x2="{x(interval[1]):.1f}" y1="{y}" y2="{y}" class="ci"/>')
        for k, v in enumerate(values):
            if math.isfinite(v):
                out.append(f'<circle cx="{x(v):.1f}" cy="{y}" r="3.5" class="dot"><title>seed #{k + 1}: {_num(v)}'
                           f'</title></circle>')
    out.append(f'<text x="{left}" y="{height - 6}" class="tick">{_num(lo)}</text>'
               f'<text x="{right}" y="{height - 6}" class="tick end">{_num(hi)}</text></svg>')
    return "".join(out)


def _stat_block(st: dict[str, Any]) -> str:
    """The per-seed points, the interval and what would change the verdict, for one statistical part."""
    e = html.escape
    eff = st["effect"]
    arms = _strip_svg([(st["treatment"], st.get("treatment_values", [])),
                       (st["control"], st.get("control_values", []))])
    bound = st.get("bound", 0.0)
    lines = [(0.0, "0")] + ([(bound, f"bound {_num(bound)}")] if bound else [])
    if st.get("kind") == "equivalence":
        lines = [(0.0, "0"), (-bound, f"-{_num(bound)}"), (bound, f"+{_num(bound)}")]
    interval = (eff["lo"], eff["hi"]) if eff.get("lo") is not None else None
    diffs = _strip_svg([("paired effect", st.get("differences", []))], interval=interval, lines=lines)
    p_text = f"p (support) {_num(st.get('p_support'))}, p (contradict) {_num(st.get('p_contradict'))}"
    if "p_holm" in st:
        p_text += f", Holm-adjusted p {_num(st['p_holm'])} over {st.get('family_size')} tests"
        if st.get("holm_downgraded"):
            p_text += " (<b>not significant across the catalog</b>)"
    mde = st.get("mde")
    need = st.get("seeds_to_decide")
    change = (f"minimum detectable effect (80 % power, n={eff['n']}): {_num(mde)} beyond the bound" if mde is not None
              else "one seed: no spread, no interval")
    if need is not None:
        change += f"; at this mean and spread the interval would clear the bound with {need} seeds"
    return (f'<div class="stat"><p class="small"><b>{e(st["kind"])}</b> on <code>{e(st["metric"])}</code> '
            f'({e(st["treatment"])} vs {e(st["control"])}, {e(st["better"])} is better; {e(st.get("wanted", ""))}): '
            f'effect {_num(eff["mean"])}, {_ci(eff)}, sd of paired differences {_num(eff.get("sd", eff.get("std")))}, '
            f'n={eff["n"]}, df={eff.get("df")}; part verdict <b>{e(str(st.get("verdict", "")))}</b>. {p_text}. '
            f'What would change it: {change}.</p>'
            f'<div class="strips">{arms}{diffs}</div></div>')


def stored_text(r: TipResult) -> str:
    """The stored full verdict beside this run's (empty when none is stored): ``confirmed (n=5, 2026-12-07)``,
    with ``DISAGREES`` when it points the other way and ``stale`` when the tip changed since."""
    s = r.stored_full
    if not s:
        return ""
    text = f"{s['verdict']} (n={s.get('seeds')}, {str(s.get('date', ''))[:10]})"
    if s.get("stale"):
        text += " stale"
    if s.get("disagrees"):
        text += " DISAGREES"
    return text


def _stored_paragraph(r: TipResult) -> str:
    s = r.stored_full
    if not s:
        return ""
    e = html.escape
    flag = (' <b class="disagree">This run points the other way: the difference is worth a look (a quick setting '
            'too small, a changed tip, or a claim that holds only at one scale).</b>' if s.get("disagrees") else "")
    stale = f' <span class="small">Stale: {e(s["stale"])}; rerun it with <code>dltricks verify --full --only ' \
            f'{e(r.id)} --store</code>.</span>' if s.get("stale") else ""
    if s.get("code_changed") and not s.get("stale"):
        stale = (' <span class="small">Code the tip exercises (the trainer, data or layers included) has changed '
                 'since; the setting has not.</span>')
    return (f'<p><span class="label">Stored full-mode verdict:</span> {_badge(s["verdict"])} with {s.get("seeds")} '
            f'seeds, {e(str(s.get("wall_s", 0)))} s wall on {e(str(s.get("machine", "")))}, commit '
            f'<code>{e(str(s.get("commit", ""))[:10])}</code>, {e(str(s.get("date", "")))}.{flag}{stale}</p>')


def _larger_runs(r: TipResult) -> str:
    """The repository's larger runs of the same question (docs pages and headings, relative to the repo root)."""
    if not r.larger_runs:
        return ""
    e = html.escape
    items = []
    for entry in r.larger_runs:
        where, _, what = entry.partition(": ")
        items.append(f"<code>{e(where)}</code>" + (f" ({e(what)})" if what else ""))
    return '<p class="small"><span class="label">Larger runs in the repository:</span> ' + "; ".join(items) + "</p>"


def _budget(r: TipResult) -> str:
    ev = r.evidence or {}
    budget = ev.get("budget") or {}
    runs = sum(len(v) for v in (ev.get("health") or {}).values())
    parts = [f"{_num(v)} {k}" for k, v in budget.items()]
    text = ("per run " + ", ".join(parts)) if parts else "budget not reported"
    if runs:
        text += f"; {runs} training runs"
    return text + f"; {r.elapsed_s:.1f} s wall, {r.cpu_s:.1f} s CPU" + (" (cached)" if r.cached else "")


def _tuning(r: TipResult) -> str:
    tuning = (r.evidence or {}).get("tuning") or {}
    if not tuning:
        return ""
    e = html.escape
    items = []
    for arm, t in tuning.items():
        grid = ", ".join(f"{_num(lr)}: {_num(score)}" for lr, score in zip(t.get("grid", []), t.get("scores", [])))
        items.append(f"{e(arm)} <b>{_num(t.get('chosen'))}</b> ({grid})")
    first = next(iter(tuning.values()))
    return (f'<p class="small"><span class="label">Learning rate per arm</span> (grid run on tuning seed '
            f'{first.get("seed")}, chosen by {e(str(first.get("metric")))}, before the seeds): '
            + "; ".join(items) + "</p>")


def _time(r: TipResult) -> str:
    if r.status != "implemented":
        return ""
    return f"{r.elapsed_s:.1f} s" + (" (cached)" if r.cached else "")


def _badge(verdict: str) -> str:
    return f'<span class="badge v-{verdict.replace(" ", "-")}">{html.escape(verdict)}</span>'


def _section(r: TipResult) -> str:
    e = html.escape
    out = [f'<section class="tip" id="{e(r.id)}">',
           f"<h3>{e(r.title)} <code>{e(r.id)}</code> {_badge(r.verdict)}</h3>",
           f'<p class="claim">{e(r.claim)}</p>',
           f'<p class="small"><span class="label">Source:</span> {e(r.source)} &middot; '
           f'<span class="label">Section:</span> {e(r.section)}'
           + (' &middot; <span class="label">Code exercised:</span> '
              f'{", ".join("<code>" + e(m) + "</code>" for m in r.exercises)}'
              if r.exercises else "") + "</p>",
           f'<p class="rule"><span class="label">Verdict rule (fixed before running):</span> {e(r.rule)}</p>',
           f'<p class="reason"><span class="label">Outcome:</span> {e(r.reason)}</p>',
           _stored_paragraph(r)]
    ev = r.evidence or {}
    if ev.get("setup"):
        out.append(f'<p><span class="label">Setup:</span> {e(ev["setup"])} '
                   f'<span class="small">(mode {e(r.mode)}, seeds {e(", ".join(map(str, r.seeds)))})</span></p>')
    if ev:
        out.append(f'<p class="small"><span class="label">Budget:</span> {e(_budget(r))}</p>')
    out.append(_tuning(r))
    out.append(_larger_runs(r))
    if r.setup_problems:
        out.append('<p class="small"><span class="label">Setup check failed</span> (not counted as evidence):</p><ul>'
                   + "".join(f"<li>{e(p)}</li>" for p in r.setup_problems) + "</ul>")
    arms = ev.get("arms") or {}
    if arms:  # one row per metric, one column per arm: mean +- std (n seeds)
        from dltricks.evidence import summarize

        decisive = {st.get("metric") for st in r.stats}
        metrics = sorted({m for a in arms.values() for m in a}, key=lambda m: (m not in decisive, m))
        out.append('<table class="arms"><thead><tr><th>metric</th>' + "".join(f"<th>{e(a)}</th>" for a in arms)
                   + "</tr></thead><tbody>")
        for m in metrics:
            name = f"<b>{e(m)}</b>" if m in decisive else e(m)
            cells = "".join(f'<td class="num">{_pm(summarize(v[m])) if m in v else ""}</td>' for v in arms.values())
            out.append(f"<tr><td>{name}</td>{cells}</tr>")
        out.append("</tbody></table>")
    for st in r.stats:
        if st.get("kind") in STATISTICAL:
            out.append(_stat_block(st))
    checks = ev.get("checks") or {}
    values = ev.get("values") or {}
    if checks or values:
        out.append('<table class="values"><thead><tr><th>measured</th><th>value</th></tr></thead><tbody>')
        for name, passed in checks.items():
            out.append(f"<tr><td>check: {e(name)}</td><td>{'holds' if passed else '<b>fails</b>'}</td></tr>")
        for name, value in values.items():
            out.append(f'<tr><td>{e(name)}</td><td class="num">{e(_num(value))}</td></tr>')
        out.append("</tbody></table>")
    if ev.get("notes"):
        out.append(f'<p class="small"><span class="label">Notes:</span> {e(ev["notes"])}</p>')
    if r.plots:
        out.append('<div class="plots">' + "".join(f'<img class="plot" src="{e(plot)}" alt="plot for {e(r.id)}">'
                                                   for plot in r.plots) + "</div>")
    if r.error:
        out.append(f"<details><summary>traceback</summary><pre>{e(r.error)}</pre></details>")
    out.append("</section>")
    return "\n".join(out)


def _family_text(family: dict[str, Any] | None) -> str:
    if not family or "tests" not in family:
        return ""
    if family.get("mode") != "full":
        return f"Multiple comparisons: {family['method']}."
    changed = family.get("changed") or []
    return (f"Multiple comparisons: {family['method']} ({family['tests']} tests), family-wise error rate "
            f"{family['alpha']:g} for all confirmed and refuted verdicts together; "
            + (f"verdicts changed by it: {'; '.join(changed)}." if changed else "no verdict changed by it."))


def render_html(results: Sequence[TipResult], meta: dict[str, Any]) -> str:
    template = string.Template(resources.files("dltricks.tips").joinpath("report.html").read_text())
    e = html.escape
    rows = []
    groups = grouped(results)
    for title, members in groups:
        if len(groups) > 1:
            rows.append(f'<tr class="group"><th colspan="5">{e(title)} ({len(members)})</th></tr>')
        for r in members:
            rows.append(f'<tr class="row" data-verdict="{e(r.verdict)}"><td><a href="#{e(r.id)}">{e(r.id)}</a></td>'
                        f'<td title="{e(r.claim)}">{e(r.title)}</td><td>{_badge(r.verdict)}'
                        + (f'<br><span class="small">stored full: {e(stored_text(r))}</span>' if r.stored_full else '')
                        + '</td>'
                        f'<td>{key_numbers(r)}</td><td class="num">{_time(r)}</td></tr>')
    counts = Counter(r.verdict for r in results)
    count_text = " ".join(f"<span>{_badge(v)} {counts[v]}</span>" for v in VERDICT_ORDER if counts[v])
    meta_text = " &middot; ".join(f"{e(str(k))}: {e(str(v))}" for k, v in meta.items()
                                  if k != "multiple comparisons")  # stated in words below the counts
    title = f"dltricks evidence report ({meta.get('mode', '')} mode)"
    return template.substitute(title=e(title), meta=meta_text, counts=count_text, rows="\n".join(rows),
                               sections="\n".join(_section(r) for r in results),
                               family=e(_family_text(meta.get("multiple comparisons"))))


def write_report(results: Sequence[TipResult], out: Path, *, mode: str, elapsed_s: float,
                 family: dict[str, Any] | None = None, workers: int = 1) -> dict[str, Any]:
    """Write ``out/results.json`` and ``out/index.html`` atomically (mode 0644); return the metadata.

    ``family``: what :func:`dltricks.tips.engine.family_control` applied (stated in the report).
    """
    from dltricks.evidence import stats

    out = Path(out)
    meta = {"mode": mode, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "total time": f"{elapsed_s:.1f} s", "workers": workers, **machine_info(),
            "intervals": f"two-sided {100 * (1 - stats.ALPHA):g} % Student-t intervals of paired effects",
            "multiple comparisons": family or {"method": "not stated (report written without family_control)"}}
    atomic_write_json(out / "results.json", {"meta": meta, "tips": [r.to_dict() for r in results]}, mode=PUBLIC)
    atomic_write_text(out / "index.html", render_html(results, meta), mode=PUBLIC)
    return meta


def summary_table(results: Sequence[TipResult], *, title: str = "dltricks verify") -> Any:
    """A rich Table with one row per tip."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("tip", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("key numbers", overflow="fold")  # a long number folds onto the next line, never cut
    table.add_column("time", justify="right", no_wrap=True)
    with_stored = any(r.stored_full for r in results)
    if with_stored:  # the stored full-mode verdict beside this run's (dltricks.tips.stored)
        table.add_column("stored full", overflow="fold")
    groups = grouped(results)
    for title, members in groups:
        if len(groups) > 1:
            table.add_section()
            table.add_row(f"[bold]{title} ({len(members)})[/]", "", "", "", *([""] if with_stored else []))
        for r in members:
            style = RICH_STYLE.get(r.verdict, "")
            time_text = "" if r.status != "implemented" else f"{r.elapsed_s:.1f}s" + ("*" if r.cached else "")
            stored = stored_text(r).replace("DISAGREES", "[bold red]DISAGREES[/]")
            table.add_row(r.id, f"[{style}]{r.verdict}[/]", key_numbers(r, plain=True), time_text,
                          *([stored] if with_stored else []))
    return table
