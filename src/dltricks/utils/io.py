"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

The bytes go to a temporary file in the destination folder, which is flushed and ``fsync``-ed, then
renamed over the destination (``os.replace`` is atomic on POSIX), and the folder is ``fsync``-ed so
the rename itself survives a crash. A process killed mid-write leaves at most a stray temporary file;
:func:`remove_temp_files` removes those of a folder (``fit`` does it for its run directory at every
start and resume, under the run directory's lock, when no other writer can be using them).

:func:`check_writable_dir` and :func:`check_free_space` are the preflights of a command that will write:
they fail with one line (:class:`~dltricks.errors.StorageError`) before any work is spent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from dltricks.errors import StorageError, storage_error

# Temporary files of unfinished writes: ours (``.<name>.<random>.tmp``, see :func:`atomic_open`) and those
# that safetensors' own writer makes next to its target (``.tmp`` + 6 random characters).
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp|\.tmp[A-Za-z0-9]{6}")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, permissions: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` atomically when the block exits cleanly.

    The temporary file is private (0600, from ``mkstemp``) and the result keeps that mode unless
    ``permissions`` (e.g. ``0o644`` for files others should read, such as a report) says otherwise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if permissions is not None:
                os.fchmod(handle.fileno(), permissions)
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        _name_the_path(err, path)
        raise


def _name_the_path(err: BaseException, path: Path) -> None:
    """Raise an ``OSError`` of a write or ``fsync`` (which names no file: a full disk...) again naming ``path``."""
    if isinstance(err, OSError) and err.filename is None and err.errno is not None:
        raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` atomically; ``mode``: the file's permissions (default: private, 0600)."""
    with atomic_open(path, "wb", permissions=mode) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> None:
    with atomic_open(path, "w", permissions=mode) as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2, mode: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n", mode=mode)


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Let ``writer(tmp_path)`` write a file by path (e.g. ``safetensors.torch.save_file``), then
    move it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp_name))
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        _name_the_path(err, path)
        raise


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is the name of a temporary file of an unfinished atomic write."""
    return _TEMP_NAME.fullmatch(name) is not None


def remove_temp_files(folder: str | Path, *, depth: int = 1) -> list[Path]:
    """Delete the temporary files of unfinished writes in ``folder`` and its subfolders down to ``depth``
    levels; returns what was removed. Only safe while no other process writes into ``folder``."""
    removed: list[Path] = []
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if depth > 0:
                removed += remove_temp_files(entry.path, depth=depth - 1)
        elif is_temp_file(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path with none)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def check_writable_dir(path: str | Path) -> None:
    """Fail now, with one line, if folder ``path`` cannot be created or written: a regular file at it or
    above it, a read-only file system, no permission. Creates nothing."""
    path = Path(path)
    base = _existing_ancestor(path)
    if not base.is_dir():
        code = errno.ENOTDIR if base != path else errno.EEXIST
        if base == path:
            raise StorageError(f"{path}: exists and is not a folder; choose another path or move that file")
        raise storage_error(OSError(code, os.strerror(code)), f"{path} ({base} is a file)")
    if os.access(base, os.W_OK | os.X_OK):
        return
    code = errno.EACCES
    with contextlib.suppress(OSError):
        if os.statvfs(base).f_flag & os.ST_RDONLY:
            code = errno.EROFS
    shown = path if base == path else f"{path} (in {base})"
    raise storage_error(OSError(code, os.strerror(code)), shown)


def check_free_space(path: str | Path, need_bytes: int, what: str) -> None:
    """Fail now, with one line, if the disk holding ``path`` (or the closest existing ancestor) has less than
    ``need_bytes`` free for ``what``."""
    base = _existing_ancestor(Path(path))
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return  # cannot tell: the writes themselves will say
    if free < need_bytes:
        raise StorageError(f"{path}: not enough free space for {what}: about {need_bytes / 2**20:,.1f} MiB needed, "
                           f"{free / 2**20:,.1f} MiB free; free some space or choose another disk")
