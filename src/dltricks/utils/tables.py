"""Tables that read at any width, 80 columns included: numbers are never cut, text wraps.

A :mod:`rich` table squeezed into a narrow terminal shortens its cells with an ellipsis, so a parameter
count becomes ``235,1…``. :func:`print_table` sizes the table first: a number column is as wide as its
widest number (its header wraps at spaces instead), a text column folds its words onto more lines, and when
the numbers alone do not fit, the least important columns are left out, with a line that names them and
says that ``--wide`` shows everything (the table is then as wide as it needs to be).

The width is the console's: the terminal's, else ``$COLUMNS``, else 80 (rich's rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "print_table", "table_width", "set_wide", "table_console"]

# `dltricks --wide` / `dltricks COMMAND --wide` (set by the CLI for the whole command): every table at full width.
_WIDE = False


@dataclass(frozen=True)
class Column:
    """One column of :func:`print_table`.

    Attributes:
        header: its title (wraps at spaces).
        number: ``True`` for cells that must stay whole on one line (numbers, shapes, ids); ``False`` for
            text that may wrap and fold.
        justify: ``"right"`` (default for numbers) or ``"left"``.
        rank: importance when columns must be left out: the highest rank goes first; rank 0 is never left out.
        style: rich style of the cells.
    """

    header: str
    number: bool = True
    justify: str | None = None
    rank: int = 0
    style: str | None = None


_TEXT_MIN = 12  # a text column narrower than this reads as a word per line


def _needed(column: Column, cells: Sequence[str]) -> tuple[int, int]:
    """``(least, natural)`` width of a column: a number column needs its widest cell line (both), a text column
    reads at a short width and prefers its longest line; both at least the longest header word."""
    header = max((len(w) for w in column.header.split()), default=0)
    longest = max((len(line) for cell in cells for line in Text.from_markup(str(cell)).plain.splitlines()), default=0)
    if column.number:  # a number column keeps its header on one line: "val Dice" stays searchable
        return max(len(column.header), longest), max(len(column.header), longest)
    return max(header, min(longest, _TEXT_MIN)), max(header, longest, len(column.header))


def table_width(widths: Sequence[int]) -> int:
    """Width of a boxed rich table whose columns are ``widths`` wide (one space of padding each side, a border
    between columns and at both ends)."""
    return sum(widths) + 3 * len(widths) + 1


def _widths(columns: Sequence[Column], least: list[int], natural: list[int], room: int) -> list[int]:
    """Every column at its least width, then the room left given to the text columns, narrowest first, up to
    their natural width."""
    widths = list(least)
    spare = room - table_width(widths)
    text = sorted((i for i, c in enumerate(columns) if not c.number), key=lambda i: natural[i])
    for n, i in enumerate(text):
        share = max(0, spare // (len(text) - n))
        grow = min(share, natural[i] - widths[i])
        widths[i] += grow
        spare -= grow
    return widths


def set_wide(flag: bool) -> None:
    """Make every table of this process full-width (``--wide``): :func:`print_table` leaves nothing out and
    :func:`table_console` does not fold cells to the terminal's width."""
    global _WIDE
    _WIDE = bool(flag)


def table_console() -> Console:
    """The console to print a plain rich table on: the terminal's width, or unbounded under ``--wide`` (a
    table that does not expand is then printed at its natural width)."""
    return Console(width=100_000) if _WIDE else Console()


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, title: str | None = None,
                wide: bool | None = None, console: Console | None = None) -> list[str]:
    """Print ``rows`` under ``columns`` on ``console`` (default: stdout) without cutting a number; returns the
    headers of the columns left out (empty with ``wide``; ``None``: the process-wide ``--wide`` setting)."""
    wide = _WIDE if wide is None else wide
    console = console or Console()
    sizes = [_needed(c, [row[i] for row in rows]) for i, c in enumerate(columns)]
    least, natural = [s[0] for s in sizes], [s[1] for s in sizes]
    keep = list(range(len(columns)))
    if not wide:
        for i in sorted((i for i, c in enumerate(columns) if c.rank > 0), key=lambda i: (-columns[i].rank, -i)):
            if table_width([least[k] for k in keep]) <= console.width:
                break
            keep.remove(i)
    room = table_width([natural[k] for k in keep]) if wide else console.width
    widths = _widths([columns[k] for k in keep], [least[k] for k in keep], [natural[k] for k in keep], room)
    if table_width(widths) > console.width:  # --wide, or the columns that are never left out do not fit
        console = Console(width=table_width(widths), file=console.file, force_terminal=console.is_terminal)
    table = Table(title=title)
    for k, width in zip(keep, widths):
        c = columns[k]
        table.add_column(c.header, justify=c.justify or ("right" if c.number else "left"), width=width,
                         overflow="fold", style=c.style)
    for row in rows:
        table.add_row(*(str(row[k]) for k in keep))
    console.print(table)
    left_out = [columns[i].header for i in range(len(columns)) if i not in keep]
    if left_out:
        console.print(f"({len(left_out)} column{'s' if len(left_out) > 1 else ''} left out to fit {console.width} "
                      f"characters: {', '.join(left_out)}; --wide shows them)", highlight=False)
    return left_out
