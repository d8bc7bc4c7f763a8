"""Atomic writes (dltricks.utils.io): the order of the file-system calls, observed with monkeypatch.

A write is durable and atomic only in this order: write the temporary file, flush it, fsync it, rename it
over the destination, fsync the folder. Renaming before the data is on disk can leave an empty or partial
file after a power cut (the rename reached the journal, the data did not); skipping the folder's fsync can
lose the rename itself. A failure at any point must leave the old file and no temporary file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dltricks.utils import io as dio


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every fsync and rename made by the atomic writers, in order, with what each one saw."""
    log: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            log.append(("fsync-dir", info.st_ino))
        else:
            log.append(("fsync-file", info.st_ino, info.st_size))
        real_fsync(fd)

    def replace(src: str, dst: str | Path) -> None:
        dst_text = Path(dst).read_text() if Path(dst).exists() else None
        log.append(("replace", Path(src), Path(dst), os.stat(src).st_ino, dst_text))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def _check_order(log: list[tuple], path: Path, data: bytes, old: str | None) -> None:
    assert [c[0] for c in log] == ["fsync-file", "replace", "fsync-dir"], log
    (_, synced_inode, synced_size), (_, src, dst, renamed_inode, dst_before), (_, dir_inode) = log
    assert synced_size == len(data)  # flushed before the fsync: every byte reaches the disk
    assert synced_inode == renamed_inode == path.stat().st_ino  # the synced file is the one renamed into place
    assert dst == path and src.parent == path.parent  # same folder: the rename cannot cross file systems
    assert src.name.startswith(f".{path.name}.") and src.name.endswith(".tmp")  # hidden, recognisable leftovers
    assert dst_before == old  # the destination is untouched until the rename
    assert dir_inode == path.parent.stat().st_ino  # the folder holding the new entry is synced after the rename
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


@pytest.mark.parametrize("old", [None, "old contents"])
def test_atomic_write_text_syncs_the_data_then_renames_then_syncs_the_folder(tmp_path, calls, old):
    path = tmp_path / "out" / "metrics.jsonl"
    if old is not None:
        path.parent.mkdir()
        path.write_text(old)
    calls.clear()
    dio.atomic_write_text(path, "x" * 10_000)  # larger than one buffer: the flush matters
    _check_order(calls, path, b"x" * 10_000, old)


def test_atomic_write_bytes_and_json(tmp_path, calls):
    dio.atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01" * 3)
    _check_order(calls, tmp_path / "a.bin", b"\x00\x01" * 3, None)
    calls.clear()
    (tmp_path / "a.bin").unlink()
    dio.atomic_write_json(tmp_path / "r.json", {"b": 1, "a": [1.5, "x"]})
    text = (tmp_path / "r.json").read_text()
    assert text == '{\n  "b": 1,\n  "a": [\n    1.5,\n    "x"\n  ]\n}\n'  # indent 2, key order kept, final newline
    _check_order(calls, tmp_path / "r.json", text.encode(), None)
    calls.clear()
    (tmp_path / "r.json").unlink()
    dio.atomic_write_json(tmp_path / "p.json", {"path": Path("/x")}, indent=0)
    assert json.loads((tmp_path / "p.json").read_text()) == {"path": "/x"}  # default=str


def test_atomic_write_with_a_writer_by_path(tmp_path, calls):
    path = tmp_path / "sub" / "w.safetensors"
    seen = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        with open(tmp, "wb") as handle:  # a library writing by path, closing its own handle
            handle.write(b"payload")

    dio.atomic_write_with(path, writer)
    assert seen[0].parent == path.parent
    _check_order(calls, path, b"payload", None)


@pytest.mark.parametrize("how", ["open", "with"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, calls, how):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    calls.clear()
    with pytest.raises(RuntimeError, match="disk on fire"):
        if how == "open":
            with dio.atomic_open(path, "w") as handle:
                handle.write("half of the new")
                raise RuntimeError("disk on fire")
        else:
            def writer(tmp: Path) -> None:
                tmp.write_text("half of the new")
                raise RuntimeError("disk on fire")

            dio.atomic_write_with(path, writer)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert not [c for c in calls if c[0] == "replace"]


@pytest.mark.parametrize("writer", ["text", "with"])
def test_a_failed_fsync_prevents_the_rename(tmp_path, monkeypatch, writer):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output"):
        if writer == "text":
            dio.atomic_write_text(path, "new")
        else:
            dio.atomic_write_with(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_folder_that_cannot_be_synced_is_not_an_error(tmp_path, monkeypatch):
    """Some file systems refuse fsync on a folder (EINVAL); the data is already in place by then."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    closed = []
    real_close = os.close
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real_close(fd)))
    dio.atomic_write_text(tmp_path / "a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "new"
    assert closed == [True]  # the folder's descriptor is closed even when its fsync fails
