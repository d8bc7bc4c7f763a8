"""``dltricks tips``: list the catalog of tips with their status and claim.

A tip's status is ``implemented`` (an experiment decides its verdict), ``doc-check`` (a documentation check: what
a source document says, compared with the other sources) or ``not yet tested`` (a topic of the sources without an
experiment); the table's title counts the three apart.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from dltricks.commands._args import json_text, own_formatter
from dltricks.tips.catalog import get_catalog, markdown_table
from dltricks.tips.engine import select_tips
from dltricks.utils.tables import Column, print_table


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser("tips", help="list the catalog of tips the evidence engine can verify",
                              formatter_class=own_formatter(formatter),
                              description="List every tip of the catalog: id, status (implemented / doc-check / "
                                          "not yet tested), claim, the source passages it cites and, with --rules, "
                                          "the verdict rule fixed before running.")
    p.add_argument("only", nargs="*", default=None,
                   help="tip ids, globs (conv.*) or section names to show (default: all)")
    p.add_argument("--rules", action="store_true", help="also show each tip's verdict rule and what is missing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--wide", action="store_true",
                   help="one table at full width, rules included, however wide (default: fit the terminal; with "
                        "--rules one block of lines per tip)")
    p.add_argument("--markdown", action="store_true",
                   help="print the Markdown catalog table of docs/evidence.md (tests/test_tip_declarations.py checks "
                        "that the docs hold exactly this table)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tips = select_tips(get_catalog(), args.only)
    rows = []
    for tip in tips:
        missing = tip.missing()
        rows.append({"id": tip.id, "title": tip.title, "status": tip.status, "kind": tip.kind, "section": tip.section,
                     "claim": tip.claim, "source": tip.reference,
                     "cite": [{"file": c.file, "first": c.first, "last": c.last, "topic": c.topic} for c in tip.cite],
                     "references": tip.source, "finding": tip.finding, "rule": tip.rule.describe(),
                     "experiment": tip.experiment_name, "exercises": tip.exercise_names(), "missing": missing})
    if args.json:
        print(json_text(rows))
        return 0
    if args.markdown:
        print(markdown_table(tips))
        return 0
    console = Console()
    if args.rules and not args.wide:
        _print_blocks(rows, console, title=count_line(tips))
        return 0
    columns = [Column("id", justify="left"), Column("status", justify="left"), Column("claim", number=False)]
    if args.rules:
        columns.append(Column("verdict rule / missing", number=False))
    table = []
    for r in rows:
        status = STATUS_STYLE.get(r["status"], "{}").format(r["status"])
        decided_by = f"finding: {r['finding']}" if r["finding"] else r["rule"]
        extra = [decided_by + ("\nmissing: " + "; ".join(r["missing"]) if r["missing"] else "")] if args.rules else []
        table.append([r["id"], status, r["claim"], *extra])
    print_table(columns, table, title=count_line(tips), wide=args.wide, console=console)
    return 0


def _print_blocks(rows: list[dict], console: Console, *, title: str) -> None:
    """``tips --rules`` at the terminal's width: per tip, its id and status, then claim, rule and what is missing
    as indented paragraphs (four columns of prose do not fit 80 characters)."""
    import textwrap

    width = max(40, console.width)
    console.print(title, highlight=False)
    for r in rows:
        console.print()
        console.print(f"[bold]{r['id']}[/]  {STATUS_STYLE.get(r['status'], '{}').format(r['status'])}")
        decided_by = ("finding", r["finding"]) if r["finding"] else ("rule", r["rule"])
        for label, text in (("claim", r["claim"]), decided_by, ("missing", "; ".join(r["missing"]))):
            if text:
                console.print(textwrap.fill(f"{label}: {text}", width=width, initial_indent="  ",
                                            subsequent_indent="    ", break_long_words=False), highlight=False,
                              markup=False, soft_wrap=True)


STATUS_STYLE = {"implemented": "[green]{}[/]", "doc-check": "[cyan]{}[/]", "not yet tested": "[dim]{}[/]"}


def count_line(tips: list) -> str:
    """"N tips: X implemented experiments, Y documentation checks, Z not yet tested"."""
    counts = {status: sum(t.status == status for t in tips) for status in STATUS_STYLE}
    docs = counts["doc-check"]
    return (f"{len(tips)} tips: {counts['implemented']} implemented experiments, {docs} "
            f"documentation check{'' if docs == 1 else 's'}, {counts['not yet tested']} not yet tested")
