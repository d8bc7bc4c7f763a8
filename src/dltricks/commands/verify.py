"""``dltricks verify``: run the tips' experiments, decide verdicts, write the HTML report.

Quick mode (the default, what ``make run`` uses) runs every implemented tip on small settings in a few
minutes and may only say "consistent with" / "not consistent with" / "inconclusive" (exact checks
decide in any mode); full mode uses larger settings and >= 5 seeds and may confirm or refute.
Results are cached by a hash of each tip's code and configuration, so a rerun redoes only what changed.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from dltricks.commands._args import own_formatter
from dltricks.tips.verify import exit_code, verify


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser("verify", help="test the tips on real data and write an HTML evidence report",
                              formatter_class=own_formatter(formatter),
                              description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small settings, a few minutes for the whole catalog (the default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="larger settings and >= 5 seeds; may confirm or refute")
    p.set_defaults(mode="quick")
    p.add_argument("--only", action="append", default=None, metavar="IDS",
                   help="comma-separated tip ids, globs (conv.*) or section names; repeatable (default: all tips)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per tip (default: the tip's own: 3 quick and 5 full for every tip that trains, "
                        "1 for exact checks)")
    p.add_argument("--out", type=Path, default=Path("report"), help="report folder (index.html, results.json, plots/)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="result cache (default: $DLTRICKS_CACHE/tips, else OUT/.cache)")
    p.add_argument("--no-cache", action="store_true", help="rerun every tip even when a cached result matches")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads while the tips run (the quick tips use tiny models, for which one "
                        "thread is fastest and is not slowed down by other jobs on the machine)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes running tips side by side, each with --threads threads (default: 1; "
                        "`dltricks run` uses 2)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds start here instead of 0: a disjoint seed set, to check that the verdicts are stable")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N: where the experiments that support it train; in full mode the tips "
                        "that need a GPU run only with cuda")
    p.add_argument("--store", nargs="?", const=True, default=False, type=Path, metavar="DIR",
                   help="with --full: keep the results in the stored evidence base (default folder: the package's "
                        "tips/evidence_base/, which `dltricks verify` shows beside every later run)")
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (recorded in the stored evidence's provenance)."""
    parts = ["dltricks", "verify", f"--{args.mode}"]
    if args.only:
        parts += ["--only", ",".join(args.only)]
    for flag, value, default in (("--seeds", args.seeds, None), ("--first-seed", args.first_seed, 0),
                                 ("--workers", args.workers, 1), ("--threads", args.threads, 1),
                                 ("--device", args.device, "cpu")):
        if value != default:
            parts += [flag, str(value)]
    if args.store is not False:
        parts += ["--store"] + ([] if args.store is True else [str(args.store)])
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    results = verify(command=_command(args), mode=args.mode, only=args.only, seeds=args.seeds, out=args.out,
                     cache_dir=args.cache_dir, use_cache=not args.no_cache, threads=args.threads, workers=args.workers,
                     first_seed=args.first_seed, store=args.store, device=args.device)
    return exit_code(results)
