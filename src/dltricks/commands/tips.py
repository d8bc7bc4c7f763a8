"""``dltricks tips``: list the catalog of tips with their status and claim."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from dltricks.tips.catalog import get_catalog, markdown_table
from dltricks.tips.engine import select_tips


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser("tips", help="list the catalog of tips the evidence engine can verify",
                              formatter_class=formatter,
                              description="List every tip of the catalog: id, status (implemented / not implemented "
                                          "yet), claim and, with --rules, the verdict rule fixed before running.")
    p.add_argument("only", nargs="*", default=None,
                   help="tip ids, globs (conv.*) or section names to show (default: all)")
    p.add_argument("--rules", action="store_true", help="also show each tip's verdict rule and what is missing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true",
                   help="print the Markdown catalog table of docs/evidence.md (tests/test_tip_declarations.py checks "
                        "that the docs hold exactly this table)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tips = select_tips(get_catalog(), args.only)
    rows = []
    for tip in tips:
        missing = tip.missing()
        rows.append({"id": tip.id, "title": tip.title,
                     "status": "implemented" if not missing else "not implemented yet", "section": tip.section,
                     "claim": tip.claim, "source": tip.source, "rule": tip.rule.describe(),
                     "experiment": tip.experiment_name, "exercises": tip.exercise_names(), "missing": missing})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        print(markdown_table(tips))
        return 0
    done = sum(r["status"] == "implemented" for r in rows)
    table = Table(title=f"{len(rows)} tips, {done} implemented")
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("claim")
    if args.rules:
        table.add_column("verdict rule / missing")
    for r in rows:
        status = "[green]implemented[/]" if r["status"] == "implemented" else "[dim]not implemented yet[/]"
        extra = [r["rule"] + ("\nmissing: " + "; ".join(r["missing"]) if r["missing"] else "")] if args.rules else []
        table.add_row(r["id"], status, r["claim"], *extra)
    Console().print(table)
    return 0
