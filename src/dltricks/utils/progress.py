"""Progress bars for long work (training, verification, comparisons).

A thin layer over :mod:`rich.progress` that shows live metrics (loss, accuracy, images/s) next to the
bar, draws nothing when output is not a terminal or when disabled (CI logs stay readable), and is
quiet on non-zero ranks under ``torchrun``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class ProgressBar:
    """``with ProgressBar(total, "train") as bar: bar.advance(1, loss=0.3)``.

    Args:
        total: number of steps.
        description: text at the left of the bar.
        enabled: ``None`` shows the bar only on rank 0 and only when stderr is a terminal or
            ``DLTRICKS_PROGRESS=1``; ``False`` never shows it.
    """

    def __init__(self, total: int, description: str = "", *, enabled: bool | None = None) -> None:
        if enabled is None:
            forced = os.environ.get("DLTRICKS_PROGRESS")
            enabled = _rank() == 0 and (forced == "1" or (forced != "0" and sys.stderr.isatty()))
        self.enabled = enabled
        self.total = total
        self.description = description
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, metrics="")
        return self

    def advance(self, steps: int = 1, **metrics: float | str) -> None:
        if self._progress is None:
            return
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        try:
            self._progress.update(self._task, advance=steps, metrics=text)
        except (BrokenPipeError, ValueError):  # stderr was closed (`... 2>&1 | head`): the work goes on, unshown
            self._close_quietly()

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
        if self._progress is not None:
            try:
                self._progress.__exit__(exc_type, exc, tb)
            except (BrokenPipeError, ValueError):
                self._close_quietly()
