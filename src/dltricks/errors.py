"""User-facing errors.

Every error a user can cause (a bad option, a missing file, a corrupted data set, a hostile
checkpoint) is raised as a :class:`DltricksError` subclass with a message that says what was wrong
and what was expected. The CLI prints such errors as one line on stderr and exits non-zero; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Iterable
from typing import Any


class DltricksError(Exception):
    """Base class of errors caused by user input, reported without a traceback."""


class ConfigError(DltricksError, ValueError):
    """An unknown key, a wrong type or an out-of-range value in a recipe or option."""


class ModelError(DltricksError, ValueError):
    """An unknown model name, bad constructor arguments or an input the model cannot take."""


class DataError(DltricksError, ValueError):
    """A missing, empty, corrupted or inconsistent data set."""


class ChecksumError(DataError):
    """A file whose checksum differs from the published one."""


class CheckpointError(DltricksError, ValueError):
    """A checkpoint that is missing, truncated, incompatible or unsafe to load."""


class TrainingError(DltricksError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or Inf)."""


class RunDirError(DltricksError, RuntimeError):
    """A run directory that another process is writing to, or that holds another run."""


class StorageError(DltricksError, OSError):
    """A file or folder that cannot be read or written (read-only, not a folder, no space, no permission);
    the message names the path and what to do (see :func:`os_error_message`)."""


class ArgumentError(DltricksError, TypeError):
    """A library function called with an argument of the wrong type; the message says what it expected."""


class CatalogError(DltricksError, RuntimeError):
    """The tip catalog cannot be built: an experiment module does not import, or a declared tip does not
    resolve to its experiment and code."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to ``name``, best first (for 'did you mean' messages)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not found:
        # Fall back to substring matches so 'resnet' still suggests 'resnet18', 'resnet50'...
        found = [c for c in candidates if name.lower() in c.lower()][:n]
    return found


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean: a, b?' or an empty string."""
    found = closest(name, candidates)
    return f" Did you mean: {', '.join(found)}?" if found else ""


# What a user can do about each kind of OSError (by errno); the others get the system's own words.
_OS_ADVICE = {
    errno.EROFS: ("is on a read-only file system", "choose a folder on a writable disk"),
    errno.ENOTDIR: ("has a regular file where a folder is expected", "choose another path or move that file"),
    errno.EISDIR: ("is a folder where a file is expected", "give a file path"),
    errno.ENOSPC: ("cannot be written: no space left on the device", "free some space or choose another disk"),
    errno.EDQUOT: ("cannot be written: disk quota exceeded", "free some space or choose another disk"),
    errno.EACCES: ("cannot be accessed: permission denied", "choose a folder you may write to or change its "
                                                             "permissions"),
    errno.EPERM: ("cannot be accessed: operation not permitted", "choose another folder or change its permissions"),
    errno.ENOENT: ("does not exist", "check the path"),
    errno.EEXIST: ("already exists", "choose another path"),
    errno.ENAMETOOLONG: ("has a name that is too long", "choose a shorter path"),
    errno.ELOOP: ("has too many symbolic links", "check the links in the path"),
    errno.EMFILE: ("cannot be opened: too many open files", "raise the limit (ulimit -n) or close other programs"),
}


def os_error_message(err: OSError, path: Any = None) -> str:
    """One line for an ``OSError``: the path, what is wrong with it and what to do, e.g. ``runs/a: is on a
    read-only file system; choose a folder on a writable disk``."""
    where = path if path is not None else err.filename
    what, advice = _OS_ADVICE.get(err.errno or -1, (None, None))
    if what is None:
        reason = err.strerror or str(err) or type(err).__name__
        what = f"cannot be used ({reason})" if where is not None else reason
    if where is None:
        where = "a file"
    else:
        where = os.fsdecode(where) if isinstance(where, (bytes, os.PathLike)) else str(where)
    return f"{where}: {what}" + (f"; {advice}" if advice else "")


def storage_error(err: OSError, path: Any = None) -> StorageError:
    """``err`` as a :class:`StorageError` whose message is :func:`os_error_message` (errno kept)."""
    wrapped = StorageError(os_error_message(err, path))
    wrapped.errno = err.errno
    return wrapped
