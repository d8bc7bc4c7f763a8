"""Exclusive run directories: one writer at a time, held with an OS lock for the whole run.

Two trainings writing into one folder would leave a run mixed from both (the config of one, the weights
and metrics of the other). So a writer first takes ``run_dir/.lock`` with ``flock(LOCK_EX | LOCK_NB)`` and
keeps it until it is done; a second writer (a new run or a ``--resume``) is refused at once with one line
naming the holder's process, read from the lock file::

    run directory runs/a is in use by process 4242 (dltricks train small_cnn ..., since 2025-01-02 10:11:12);
    wait for it to end or choose another run directory

The kernel drops an ``flock`` when its process dies, however it dies (``kill -9`` included), so a lock
file left by a killed run is stale by construction: the next writer gets the lock, says whose it was, and
overwrites the holder's details. Holding the lock also makes it safe to delete the temporary files of
writes that a killed process never finished (:func:`dltricks.utils.io.remove_temp_files`): no other
process can be writing them. The lock file is deleted when the lock is released (the lock is re-taken if
the file was replaced in between, so two processes never hold locks on different files of one folder).

The lock is re-entrant within a process (the CLI takes it before building the data, and ``fit`` takes it
again); a forked child does not inherit it. On file systems without ``flock`` (some network mounts) the
run goes on unlocked and :attr:`RunDirLock.locked` is ``False``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dltricks.errors import RunDirError, storage_error
from dltricks.utils.io import remove_temp_files

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunDirLock", "run_dir_lock", "lock_holder", "check_not_in_use"]

LOCK_NAME = ".lock"
# A writer retries this long before it reports the folder as in use: a probe (check_not_in_use) holds a
# shared lock for microseconds, and must not make a writer fail.
_RETRY_S = 1.0
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


@dataclass
class RunDirLock:
    """What :func:`run_dir_lock` yields.

    Attributes:
        path: the run directory.
        locked: whether an OS lock is held (``False`` where the file system has no ``flock``).
        created: whether this lock created the folder (it is removed again if it is left empty).
        stale_holder: the holder details of a lock file left by a process that died (``None`` if none).
        removed: temporary files of unfinished writes that were deleted when the lock was taken.
    """

    path: Path
    locked: bool = True
    created: bool = False
    stale_holder: dict[str, Any] | None = None
    removed: list[Path] = field(default_factory=list)
    _fd: int | None = None
    _depth: int = 1
    _pid: int = 0


_held: dict[str, RunDirLock] = {}  # real path of the folder -> the lock this process holds on it


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def lock_holder(path: str | Path) -> dict[str, Any] | None:
    """The details (``pid``, ``host``, ``since``, ``command``) written by the process that holds, or last
    held, the lock of run directory ``path``; ``None`` when there is no lock file."""
    try:
        fd = os.open(Path(path) / LOCK_NAME, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _in_use(folder: Path, holder: dict[str, Any] | None) -> RunDirError:
    return RunDirError(f"run directory {folder} is in use by {_describe(holder)}; wait for it to end or choose "
                       "another run directory")


def check_not_in_use(path: str | Path) -> None:
    """Raise the :class:`~dltricks.errors.RunDirError` that :func:`run_dir_lock` would, without taking the lock
    (an early check, before minutes of data loading): another process holds the folder's lock now."""
    if fcntl is None:
        return
    lock_path = Path(path) / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise _in_use(Path(path), _read_holder(fd)) from None
    except OSError:
        return  # no flock on this file system
    finally:
        os.close(fd)


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder or not isinstance(holder.get("pid"), int):
        return "another process"
    command = str(holder.get("command") or "")
    extra = [command if len(command) <= 80 else command[:77] + "..."] if command else []
    if holder.get("host") and holder["host"] != socket.gethostname():
        extra.append(f"on {holder['host']}")
    if holder.get("since"):
        extra.append(f"since {holder['since']}")
    return f"process {holder['pid']}" + (f" ({', '.join(extra)})" if extra else "")


def _open_locked(lock_path: Path, folder: Path) -> int | None:
    """An fd of ``lock_path`` that holds an exclusive ``flock``; ``None`` when the file system has none."""
    deadline = time.monotonic() + _RETRY_S
    for _ in range(1000):  # retried while a probe holds the file, or its holder deletes it between open and lock
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as err:
            raise storage_error(err, lock_path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if time.monotonic() > deadline:
                raise _in_use(folder, holder) from None
            time.sleep(0.02)
            continue
        except OSError as err:
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                return None
            raise storage_error(err, lock_path) from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released and deleted this file meanwhile: lock the new one
    raise RunDirError(f"run directory {folder}: could not take its lock (the lock file keeps changing)")


@contextlib.contextmanager
def run_dir_lock(path: str | Path, *, command: str | None = None) -> Iterator[RunDirLock]:
    """Hold the exclusive lock of run directory ``path`` (created if missing) inside the block.

    Raises :class:`~dltricks.errors.RunDirError` when another process holds it and
    :class:`~dltricks.errors.StorageError` when the folder cannot be created or written. On entry the
    temporary files of unfinished writes in the folder (and one level below) are deleted.
    """
    path = Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise storage_error(OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), path) from None
    except OSError as err:
        raise storage_error(err, path) from None
    key = os.path.realpath(path)
    held = _held.get(key)
    if held is not None and held._pid == os.getpid():
        held._depth += 1
        try:
            yield held
        finally:
            held._depth -= 1
        return
    lock = RunDirLock(path, created=created, _pid=os.getpid())
    lock_path = path / LOCK_NAME
    fd = _open_locked(lock_path, path) if fcntl is not None else None
    lock.locked, lock._fd = fd is not None, fd
    if fd is not None:
        previous = _read_holder(fd)
        if previous and previous.get("pid") != os.getpid():
            lock.stale_holder = previous  # we got the lock, so its holder is gone
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": _dt.datetime.now().isoformat(sep=" ", timespec="seconds"),
                  "command": command if command is not None else _command_line()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as err:
            _release(lock, lock_path)
            raise storage_error(err, lock_path) from None
    lock.removed = remove_temp_files(path, depth=1)
    _held[key] = lock
    try:
        yield lock
    finally:
        _held.pop(key, None)
        _release(lock, lock_path)


def _command_line() -> str:
    """This process's command line as a user typed it (``dltricks train ...``, not the script's full path)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if Path(program).stem in ("dltricks", "cli", "__main__"):
        program = "dltricks"
    return " ".join([program, *sys.argv[1:]])[:300]


def _release(lock: RunDirLock, lock_path: Path) -> None:
    if lock._fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)  # while still locked: a waiting process then re-opens the new file
        fcntl.flock(lock._fd, fcntl.LOCK_UN)
        os.close(lock._fd)
        lock._fd = None
    if lock.created:
        with contextlib.suppress(OSError):
            lock.path.rmdir()  # only when nothing was written: rmdir fails on a folder with files
