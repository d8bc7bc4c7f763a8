"""``dltricks runs [DIR]``: the runs below a folder, with their recipe, status and best metrics."""

from __future__ import annotations

import argparse

from dltricks.commands._args import json_text


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "runs", help="list training runs with their status and best metrics", formatter_class=formatter,
        description="List the run directories below DIR (written by `dltricks train`), newest first: model, data, "
                    "recipe, status (finished, interrupted: cut by train.max_steps, stopped or killed, resumable "
                    "with --resume; failed: the loop raised, see the detail), epochs and the best validation "
                    "metrics. Reads only the small JSON files of each run.",
        epilog="examples:\n  dltricks runs\n  dltricks runs experiments/ --json")
    p.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="folder holding run directories")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dltricks.utils.tables import table_console
    from rich.table import Table

    from dltricks.serve.runs import find_runs

    runs = find_runs(args.dir)
    if args.json:
        print(json_text([r.to_dict() for r in runs]))
        return 0
    styles = {"finished": "green", "interrupted": "yellow", "failed": "bold red"}
    table = Table(title=f"{len(runs)} run(s) in {args.dir}")
    for column in ("run", "model", "data", "recipe", "status", "epochs", "best"):
        table.add_column(column, justify="right" if column == "epochs" else "left")
    for r in runs:
        best = ", ".join(f"{k} {v:.4g}" for k, v in r.best.items() if k in ("val_accuracy", "val_loss", "val_dice",
                                                                             "val_exact_match")) or "-"
        status = f"[{styles.get(r.status, '')}]{r.status}[/]" + (f" ({r.detail})" if r.status == "failed" else "")
        table.add_row(r.name, r.model or "?", r.data or "?", r.recipe or "defaults", status,
                      str(r.epochs or "-"), best)
    table_console().print(table)
    return 0
