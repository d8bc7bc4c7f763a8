"""Verify tips: run the selected tips' experiments, decide their verdicts, write the HTML report and print the
summary table. ``dltricks verify`` and ``dltricks run`` (``make run``) are command-line adapters of
:func:`verify`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from dltricks.errors import ConfigError
from dltricks.tips.catalog import get_catalog
from dltricks.tips.engine import TipResult, run_tips, select_tips
from dltricks.tips.report import summary_table, write_report

__all__ = ["verify", "exit_code"]


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


def exit_code(results: Sequence[TipResult]) -> int:
    """1 when any tip's experiment failed with an error, else 0."""
    return 1 if any(r.verdict == "error" for r in results) else 0
