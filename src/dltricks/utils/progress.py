"""Progress bars for long work (training, verification, comparisons).

A thin layer over :mod:`rich.progress` that shows live metrics (loss, accuracy, images/s) next to the
bar on a terminal. When stderr is not a terminal (a log file, CI) it prints plain lines instead, one every
``DLTRICKS_PROGRESS_EVERY`` seconds (default 30) and a last one at the end, so a log shows how far a long epoch
got without filling up with redraws. ``DLTRICKS_PROGRESS=0`` turns both off, ``=1`` turns them on where they
would be off; non-zero ranks under ``torchrun`` stay quiet.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Console(Console):
    """A console that goes quiet when its stream is closed (``dltricks train ... 2>&1 | head -1``): rich's own
    reaction is to exit the program, which would end a training run over a progress bar."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class ProgressBar:
    """``with ProgressBar(total, "train") as bar: bar.advance(1, loss=0.3)``.

    Args:
        total: number of steps.
        description: text at the left of the bar.
        enabled: ``None``: on rank 0 unless ``DLTRICKS_PROGRESS=0`` (a bar on a terminal, plain lines
            otherwise); ``True``: shown; ``False``: never shown.
        every_s: seconds between two plain lines (default: ``DLTRICKS_PROGRESS_EVERY``, else 30).
    """

    def __init__(self, total: int, description: str = "", *, enabled: bool | None = None,
                 every_s: float | None = None) -> None:
        if enabled is None:
            enabled = _rank() == 0 and os.environ.get("DLTRICKS_PROGRESS") != "0"
        self.enabled = enabled
        self.plain = bool(enabled) and not sys.stderr.isatty()
        self.every_s = every_s if every_s is not None else float(os.environ.get("DLTRICKS_PROGRESS_EVERY", "30"))
        self.total = total
        self.description = description
        self._progress: Progress | None = None
        self._task = None
        self._done = 0
        self._start = self._last_line = 0.0
        self._lines = self._shown = 0
        self._metrics = ""

    def __enter__(self) -> ProgressBar:
        self._start = self._last_line = time.monotonic()
        if self.enabled and not self.plain:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=_Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, metrics="")
        return self

    def advance(self, steps: int = 1, **metrics: float | str) -> None:
        if self.plain and self.enabled:
            self._done += steps
            self._metrics = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in metrics.items()) or self._metrics
            if time.monotonic() - self._last_line >= self.every_s:
                self._line()
            return
        if self._progress is None:
            return
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        try:
            self._progress.update(self._task, advance=steps, metrics=text)
        except (BrokenPipeError, ValueError):  # stderr was closed (`... 2>&1 | head`): the work goes on, unshown
            self._close_quietly()

    def _line(self) -> None:
        """One plain progress line on stderr: done/total, percent, elapsed and estimated remaining time."""
        now = time.monotonic()
        elapsed = now - self._start
        done, total = self._done, max(self.total, 1)
        left = f", ~{elapsed * (total - done) / done:.0f} s left" if 0 < done < total else ""
        text = f"{self.description}: {done}/{self.total} ({100 * done / total:.0f}%), {elapsed:.0f} s{left}"
        try:
            print(text + (f"  {self._metrics}" if self._metrics else ""), file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr was closed: the work goes on, unshown
            self.enabled = False
        self._last_line, self._lines, self._shown = now, self._lines + 1, done

    def _close_quietly(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            with contextlib.suppress(OSError, ValueError):
                progress.stop()

    def set_description(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.plain and self.enabled and self._lines and exc_type is None and self._done != self._shown:
            self._line()  # the end of work whose progress was shown
        if self._progress is not None:
            try:
                self._progress.__exit__(exc_type, exc, tb)
            except (BrokenPipeError, ValueError):
                self._close_quietly()
