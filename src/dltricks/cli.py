"""The ``dltricks`` command line.

Each sub-command lives in ``dltricks/commands/<name>.py`` and provides ``add_parser(subparsers)``
(which sets ``func`` on its parser); what commands share lives in ``dltricks/commands/_args.py``, and no
command imports another (what two commands share, such as ``dltricks run`` being ``dltricks verify --quick``,
is a library function: :func:`dltricks.tips.verify.verify`). Errors a user can cause are
:class:`~dltricks.errors.DltricksError` and are printed as one line on stderr with exit code 2; ``--debug``
shows the traceback instead. So is every ``OSError`` (a read-only folder, a path under a regular file, a
full disk, no permission): one line that names the path, says what is wrong and what to do
(:func:`~dltricks.errors.os_error_message`), exit code 2. A closed stdout (``dltricks ... | head -1``)
ends the command quietly with exit code 141 (128 + SIGPIPE, as other Unix tools), after the work it was
printing is done.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from dltricks.errors import DltricksError, os_error_message

# Sub-commands in the order ``dltricks --help`` lists them.
COMMAND_MODULES = [
    "dltricks.commands.run",
    "dltricks.commands.train",
    "dltricks.commands.search",
    "dltricks.commands.eval",
    "dltricks.commands.models",
    "dltricks.commands.profile",
    "dltricks.commands.compare",
    "dltricks.commands.compress",
    "dltricks.commands.tips",
    "dltricks.commands.verify",
    "dltricks.commands.runs",
    "dltricks.commands.serve",
]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default next to its help text."""


class _ArgumentParser(argparse.ArgumentParser):
    """Reports a bad command line as one line on stderr (exit 2) and points at ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="dltricks",
        description="Deep-learning tips and tricks as code you can run, measure and trust.",
        formatter_class=_HelpFormatter,
    )
    from dltricks import __version__

    parser.add_argument("--version", action="version", version=f"dltricks {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers, _HelpFormatter)
    for sub in subparsers.choices.values():  # --wide for every command that has not its own (issue 24)
        if "--wide" not in sub._option_string_actions:
            sub.add_argument("--wide", action="store_true",
                             help="print tables at full width, however wide (otherwise tables fit the terminal: text "
                                  "wraps, the least important columns are left out, numbers are never cut)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DLTRICKS_DEBUG") == "1"
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from dltricks.utils.tables import set_wide

    set_wide(getattr(args, "wide", False))
    try:
        result = args.func(args)
        return int(result or 0)
    except DltricksError as err:
        if debug:
            raise
        message = str(err).replace("\n", " ")  # one line, even where the message quotes several
        _error_line(f"dltricks {args.command}: error: {message}")
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`| head -1`): nothing left to say to it
        _silence(sys.stdout)
        return 141
    except OSError as err:
        if debug:
            raise
        _error_line(f"dltricks {args.command}: error: {os_error_message(err)}".replace("\n", " "))
        return 2
    except KeyboardInterrupt:
        print(f"dltricks {args.command}: interrupted", file=sys.stderr)
        return 130


def _error_line(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # stderr is closed too
        _silence(sys.stderr)


def _silence(stream: object) -> None:
    """Point a closed standard stream at /dev/null, so that the interpreter's final flush stays quiet."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (pytest's capture): nothing to flush
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
