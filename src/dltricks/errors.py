"""User-facing errors.

Every error a user can cause (a bad option, a missing file, a corrupted data set, a hostile
checkpoint) is raised as a :class:`DltricksError` subclass with a message that says what was wrong
and what was expected. The CLI prints such errors as one line on stderr and exits non-zero; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
