"""``dltricks models [PATTERN]``: list registered models with their parameter counts."""

from __future__ import annotations

import argparse


from dltricks.commands._args import json_text, own_formatter
from dltricks.models._registry import create_model, list_models, model_info
from dltricks.utils.tables import Column, print_table, table_console


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser("models", help="list registered models", formatter_class=own_formatter(formatter),
                              description="List registered models, optionally filtered by a glob pattern.")
    p.add_argument("pattern", nargs="?", default=None, help="glob pattern, e.g. 'resnet*' (default: all)")
    p.add_argument("--params", action="store_true", help="build each model and show its parameter count (slower)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier size used with --params (default: the model's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    rows = []
    for name in names:
        info = model_info(name)
        row = {"name": name, "family": info.family, "task": info.task,
               "input": "x".join(str(s) for s in info.input_size)}
        if args.params:
            model = create_model(name, num_classes=args.num_classes)
            row["params"] = sum(p.numel() for p in model.parameters())
        rows.append(row)
    if args.json:
        print(json_text(rows))
        return 0
    # name and params always; input, then family, then task are left out first when the terminal is narrow.
    kinds = {"name": Column("name", justify="left"), "family": Column("family", number=False, rank=2),
             "task": Column("task", number=False, rank=3), "input": Column("input", rank=1), "params": Column("params")}
    keys = list(rows[0]) if rows else ["name"]
    print_table([kinds[k] for k in keys], [[f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()]
                                           for row in rows],
                title=f"{len(rows)} models" + (f" matching {args.pattern!r}" if args.pattern else ""),
                console=table_console())
    return 0
