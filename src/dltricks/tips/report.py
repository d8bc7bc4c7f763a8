"""The evidence report: ``results.json``, ``index.html`` (template ``report.html``) and a rich table.

``index.html`` starts with a summary table (one row per tip, a verdict badge, the key numbers) and
then one section per tip: claim, source, the rule fixed before running, the setup, every arm's
numbers as mean +- std (n seeds), the paired effect with its standard error, exact checks, other
measured values and the plots (PNG files under ``plots/<tip id>/``, next to ``index.html``).
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

VERDICT_ORDER = ["confirmed", "consistent with", "inconclusive", "not consistent with", "refuted", "error",
                 "skipped", "not implemented yet"]
RICH_STYLE = {"confirmed": "bold white on green", "consistent with": "green", "refuted": "bold white on red",
              "not consistent with": "dark_orange", "inconclusive": "grey62", "not implemented yet": "dim",
              "skipped": "dim", "error": "bold magenta"}


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
    for st in result.stats:
        if st.get("kind") in ("effect", "non-inferiority"):
            e = st["effect"]
            t, c = st["treatment_stats"], st["control_stats"]
            pm = "+-" if plain else "&plusmn;"
            parts.append(f"{st['metric']}: {st['treatment']} {_num(t['mean'])} vs {st['control']} {_num(c['mean'])}; "
                         f"effect {_num(e['mean'])} {pm} {_num(e['se'])} SE (n={e['n']})")
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
           f'<p class="reason"><span class="label">Outcome:</span> {e(r.reason)}</p>']
    ev = r.evidence or {}
    if ev.get("setup"):
        out.append(f'<p><span class="label">Setup:</span> {e(ev["setup"])} '
                   f'<span class="small">(mode {e(r.mode)}, seeds {e(", ".join(map(str, r.seeds)))}, '
                   f'{r.elapsed_s:.1f} s wall, {r.cpu_s:.1f} s CPU{", cached" if r.cached else ""})</span></p>')
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
        if st.get("kind") in ("effect", "non-inferiority"):
            eff = st["effect"]
            out.append(f'<p class="small">Paired effect on <code>{e(st["metric"])}</code> ({e(st["treatment"])} vs '
                       f'{e(st["control"])}, {e(st["better"])} is better): mean {_num(eff["mean"])}, '
                       f'std {_num(eff["std"])}, SE {_num(eff["se"])}, n={eff["n"]}, '
                       f'2-SE interval [{_num(eff["lo"])}, {_num(eff["hi"])}]</p>')
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


def render_html(results: Sequence[TipResult], meta: dict[str, Any]) -> str:
    template = string.Template(resources.files("dltricks.tips").joinpath("report.html").read_text())
    e = html.escape
    rows = []
    for r in results:
        rows.append(f'<tr class="row" data-verdict="{e(r.verdict)}"><td><a href="#{e(r.id)}">{e(r.id)}</a></td>'
                    f'<td title="{e(r.claim)}">{e(r.title)}</td><td>{_badge(r.verdict)}</td><td>{key_numbers(r)}</td>'
                    f'<td class="num">{_time(r)}</td></tr>')
    counts = Counter(r.verdict for r in results)
    count_text = " ".join(f"<span>{_badge(v)} {counts[v]}</span>" for v in VERDICT_ORDER if counts[v])
    meta_text = " &middot; ".join(f"{e(str(k))}: {e(str(v))}" for k, v in meta.items())
    title = f"dltricks evidence report ({meta.get('mode', '')} mode)"
    return template.substitute(title=e(title), meta=meta_text, counts=count_text, rows="\n".join(rows),
                               sections="\n".join(_section(r) for r in results))


def write_report(results: Sequence[TipResult], out: Path, *, mode: str, elapsed_s: float) -> dict[str, Any]:
    """Write ``out/results.json`` and ``out/index.html`` atomically; return the metadata."""
    out = Path(out)
    meta = {"mode": mode, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "total time": f"{elapsed_s:.1f} s", **machine_info()}
    atomic_write_json(out / "results.json", {"meta": meta, "tips": [r.to_dict() for r in results]})
    atomic_write_text(out / "index.html", render_html(results, meta))
    return meta


def summary_table(results: Sequence[TipResult], *, title: str = "dltricks verify") -> Any:
    """A rich Table with one row per tip."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("tip", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("key numbers")
    table.add_column("time", justify="right", no_wrap=True)
    for r in results:
        style = RICH_STYLE.get(r.verdict, "")
        time_text = "" if r.status != "implemented" else f"{r.elapsed_s:.1f}s" + ("*" if r.cached else "")
        table.add_row(r.id, f"[{style}]{r.verdict}[/]", key_numbers(r, plain=True), time_text)
    return table
