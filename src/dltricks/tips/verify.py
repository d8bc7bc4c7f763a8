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

from dltricks.errors import ArgumentError, ConfigError
from dltricks.tips.catalog import get_catalog
from dltricks.tips.engine import TipResult, family_control, run_tips, select_tips
from dltricks.tips.report import summary_table, write_report
from dltricks.tips.stored import disagreement, load_stored, store_results
from dltricks.utils.io import check_writable_dir

__all__ = ["verify", "exit_code"]


def verify(*, mode: str = "quick", only: Sequence[str] | None = None, seeds: int | None = None,
           out: Path = Path("report"), cache_dir: Path | None = None, use_cache: bool = True,
           threads: int | None = 1, console: Console | None = None, workers: int = 1,
           first_seed: int = 0, store: bool | Path = False, command: str = "", device: str = "cpu") -> list[TipResult]:
    """Run the selected tips, write the report and print the summary table; return the results.

    ``device``: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``): where the experiments that support it train; tips whose
    full setting needs a GPU (``Tip.gpu``) are skipped in full mode on a CPU.
    ``command``: the command line recorded with stored results (the CLI passes its own).
    ``store``: keep the full-mode results in the stored evidence base (:mod:`dltricks.tips.stored`; ``True``:
    the package's ``evidence_base/``, a path: that folder). Every run shows the stored full verdict of each
    tip beside its own and flags a disagreement.

    ``threads``: torch intra-op threads during the run (restored afterwards); ``None`` leaves them alone.
    ``workers``: worker processes running tips side by side (each with ``threads`` threads).
    ``first_seed``: seeds start here instead of 0 (a disjoint seed set, to check that verdicts are stable).
    Full mode corrects the verdicts for multiplicity across the tips of the run
    (:func:`dltricks.tips.engine.family_control`).
    """
    import torch

    _check_verify_arguments(mode=mode, only=only, seeds=seeds, out=out, cache_dir=cache_dir, threads=threads,
                            workers=workers, first_seed=first_seed)
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds: got {seeds}, expected a number >= 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: got {threads}, expected a number >= 1")
    if workers < 1:
        raise ConfigError(f"--workers: got {workers}, expected a number >= 1")
    if first_seed < 0:
        raise ConfigError(f"--first-seed: got {first_seed}, expected a number >= 0")
    _check_device(device)
    if store is not False and mode != "full":
        raise ConfigError("--store: only full-mode results are stored in the evidence base (add --full)")
    if store is not False and store is not True:
        check_writable_dir(Path(store))
    # The report and the cache are written after minutes of experiments: check now that they can be.
    check_writable_dir(out)
    if cache_dir is not None:
        check_writable_dir(cache_dir)
    tips = select_tips(get_catalog(), only)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _verify(tips, mode=mode, seeds=seeds, out=out, cache_dir=cache_dir, use_cache=use_cache, console=console,
                       workers=workers, first_seed=first_seed, store=store, command=command, device=device)
    finally:
        torch.set_num_threads(previous_threads)


def _verify(tips: list, *, mode: str, seeds: int | None, out: Path, cache_dir: Path | None, use_cache: bool,
            console: Console | None, workers: int = 1, first_seed: int = 0,
            store: bool | Path = False, command: str = "", device: str = "cpu") -> list[TipResult]:
    # A log file or pipe gets a wide table instead of rich's 80-column default.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    start = time.perf_counter()
    results = run_tips(tips, mode=mode, seeds=seeds, out=out, cache_dir=cache_dir, use_cache=use_cache,
                       workers=workers, first_seed=first_seed, device=device)
    family = family_control(results, mode=mode)
    elapsed = time.perf_counter() - start
    if store:
        written = store_results(results, dest=None if store is True else Path(store), mode=mode, workers=workers,
                                command=command or f"verify(mode={mode!r}, only={[t.id for t in tips]!r}, store=...)")
        console.print(f"stored {len(written)} full-mode results in {written[0].parent if written else store}")
    attach_stored(results, console)
    write_report(results, out, mode=mode, elapsed_s=elapsed, family=family, workers=workers)
    cpu = sum(r.cpu_s for r in results if not r.cached)
    console.print(summary_table(results, title=f"dltricks verify --{mode} ({elapsed:.0f} s wall, {cpu:.0f} s CPU in "
                                               f"tips; * = cached)"))
    console.print(f"report: {Path(out) / 'index.html'}  results: {Path(out) / 'results.json'}")
    return results


def _check_device(device: object) -> None:
    """``cpu``, or ``cuda`` / ``cuda:N`` on a machine that has that GPU; anything else is one clear error."""
    import torch

    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or
                                           (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"--device: got {device!r}, expected 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith("cuda"):
        index = int(device[5:]) if ":" in device else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: no such CUDA device on this machine "
                              f"({torch.cuda.device_count()} visible); use --device cpu")


def attach_stored(results: Sequence[TipResult], console: Console | None = None) -> None:
    """Put the stored full-mode verdict of each tip (:func:`dltricks.tips.stored.load_stored`) beside the one
    just measured, flagging a disagreement. A broken stored file is reported in one line, not fatal: the run's
    own results are still written."""
    try:
        stored = load_stored()
    except ConfigError as err:
        if console is not None:
            console.print(f"[yellow]warning:[/] {err}")
        return
    for r in results:
        s = stored.get(r.id)
        if s is not None:
            r.stored_full = {**s.summary(), "disagrees": disagreement(r.verdict, s.verdict)}


def _check_verify_arguments(*, mode: object, only: object, seeds: object, out: object, cache_dir: object,
                            threads: object, workers: object, first_seed: object) -> None:
    """The types :func:`verify` takes, each refused with what was expected."""
    if mode not in ("quick", "full"):
        raise ArgumentError(f"verify: mode must be 'quick' or 'full', got {mode!r}")
    if only is not None and (isinstance(only, str) or not all(isinstance(item, str) for item in only)):  # type: ignore[attr-defined]
        raise ArgumentError(f"verify: only must be a list of tip ids, globs or sections (strings), got {only!r:.80}")
    for name, value in (("out", out), ("cache_dir", cache_dir)):
        if not isinstance(value, (str, Path)) and not (name == "cache_dir" and value is None):
            raise ArgumentError(f"verify: {name} must be a path (str or pathlib.Path), got {type(value).__name__}")
    for name, value, optional in (("seeds", seeds, True), ("threads", threads, True), ("workers", workers, False),
                                  ("first_seed", first_seed, False)):
        if not (value is None and optional) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ArgumentError(f"verify: {name} must be an integer{' or None' if optional else ''}, got "
                                f"{type(value).__name__}")


def exit_code(results: Sequence[TipResult]) -> int:
    """1 when any tip's experiment failed with an error, else 0."""
    return 1 if any(r.verdict == "error" for r in results) else 0
