"""``dltricks verify``: run the tips' experiments, decide verdicts, write the HTML report.

Quick mode (the default, what ``make run`` uses) runs every implemented tip on small settings in a few
minutes and may only say "consistent with" / "not consistent with" / "inconclusive" (exact checks
decide in any mode); full mode uses larger settings and >= 3 seeds and may confirm or refute.
Results are cached by a hash of each tip's code and configuration, so a rerun redoes only what changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from dltricks.errors import ConfigError
from dltricks.tips.catalog import get_catalog
from dltricks.tips.engine import TipResult, run_tips, select_tips
from dltricks.tips.report import summary_table, write_report


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser("verify", help="test the tips on real data and write an HTML evidence report",
                              formatter_class=formatter, description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small settings, a few minutes for the whole catalog (the default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="larger settings and >= 3 seeds; may confirm or refute")
    p.set_defaults(mode="quick")
    p.add_argument("--only", action="append", default=None, metavar="IDS",
                   help="comma-separated tip ids, globs (conv.*) or section names; repeatable (default: all tips)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per tip (default: the tip's own, 1-3 quick, >= 3 full)")
    p.add_argument("--out", type=Path, default=Path("report"), help="report folder (index.html, results.json, plots/)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="result cache (default: $DLTRICKS_CACHE/tips, else OUT/.cache)")
    p.add_argument("--no-cache", action="store_true", help="rerun every tip even when a cached result matches")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads while the tips run (the quick tips use tiny models, for which one "
                        "thread is fastest and is not slowed down by other jobs on the machine)")
    p.set_defaults(func=run)


def verify(*, mode: str = "quick", only: Sequence[str] | None = None, seeds: int | None = None,
           out: Path = Path("report"), cache_dir: Path | None = None, use_cache: bool = True,
           threads: int | None = 1, console: Console | None = None) -> list[TipResult]:
    """Run the selected tips, write the report and print the summary table; return the results.

    ``threads``: torch intra-op threads during the run (restored afterwards); ``None`` leaves them alone.
    """
    import torch

    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds: got {seeds}, expected a number >= 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: got {threads}, expected a number >= 1")
    tips = select_tips(get_catalog(), only)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _verify(tips, mode=mode, seeds=seeds, out=out, cache_dir=cache_dir, use_cache=use_cache, console=console)
    finally:
        torch.set_num_threads(previous_threads)


def _verify(tips: list, *, mode: str, seeds: int | None, out: Path, cache_dir: Path | None, use_cache: bool,
            console: Console | None) -> list[TipResult]:
    # A log file or pipe gets a wide table instead of rich's 80-column default.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    start = time.perf_counter()
    results = run_tips(tips, mode=mode, seeds=seeds, out=out, cache_dir=cache_dir, use_cache=use_cache)
    elapsed = time.perf_counter() - start
    write_report(results, out, mode=mode, elapsed_s=elapsed)
    cpu = sum(r.cpu_s for r in results if not r.cached)
    console.print(summary_table(results, title=f"dltricks verify --{mode} ({elapsed:.0f} s wall, {cpu:.0f} s CPU in "
                                               f"tips; * = cached)"))
    console.print(f"report: {Path(out) / 'index.html'}  results: {Path(out) / 'results.json'}")
    return results


def run(args: argparse.Namespace) -> int:
    results = verify(mode=args.mode, only=args.only, seeds=args.seeds, out=args.out, cache_dir=args.cache_dir,
                     use_cache=not args.no_cache, threads=args.threads)
    return 1 if any(r.verdict == "error" for r in results) else 0
