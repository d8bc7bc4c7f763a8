"""Atomic writes (dltricks.utils.io): the order of the file-system calls, observed with monkeypatch.

A write is durable and atomic only in this order: write the temporary file, flush it, fsync it, rename it
over the destination, fsync the folder. Renaming before the data is on disk can leave an empty or partial
file after a power cut (the rename reached the journal, the data did not); skipping the folder's fsync can
lose the rename itself. A failure at any point must leave the old file and no temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

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
    path = tmp_path / "out" / "run" / "metrics.jsonl"
    if old is not None:
        path.parent.mkdir(parents=True)
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
    path = tmp_path / "sub" / "deeper" / "w.safetensors"  # missing folders are created, however deep
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
@pytest.mark.parametrize("strerror", ["disk on fire", ""])
def test_a_failed_fsync_prevents_the_rename_and_the_error_names_the_file(tmp_path, monkeypatch, writer, strerror):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def fsync(fd: int) -> None:
        raise OSError(28, strerror)  # as the kernel reports a full disk: an errno, no file name

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as raised:
        if writer == "text":
            dio.atomic_write_text(path, "new")
        else:
            dio.atomic_write_with(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    # Raised again naming the destination (not the temporary file), errno and reason kept.
    err = raised.value
    assert (err.errno, err.filename) == (28, str(path))
    assert err.strerror == (strerror or os.strerror(28))
    assert isinstance(err.__cause__, OSError) and err.__cause__.filename is None


def test_the_writers_own_error_surfaces_even_when_it_removed_the_temporary_file(tmp_path):
    def writer(tmp: Path) -> None:
        tmp.unlink()
        raise ValueError("bad tensor")

    with pytest.raises(ValueError, match="bad tensor"):
        dio.atomic_write_with(tmp_path / "w.bin", writer)
    assert list(tmp_path.iterdir()) == []


def test_an_error_that_names_its_file_or_has_no_errno_passes_unchanged(tmp_path):
    def names_another(tmp: Path) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/elsewhere/input.bin")

    with pytest.raises(FileNotFoundError) as raised:
        dio.atomic_write_with(tmp_path / "out.bin", names_another)
    assert raised.value.filename == "/elsewhere/input.bin"

    with pytest.raises(OSError) as raised:
        with dio.atomic_open(tmp_path / "out.bin") as handle:
            handle.write(b"x")
            raise OSError("no errno")
    assert raised.value.errno is None and raised.value.filename is None and str(raised.value) == "no errno"


@pytest.mark.parametrize("how", ["bytes", "text", "json"])
def test_files_are_private_unless_a_mode_is_given(tmp_path, how):
    write = {"bytes": lambda p, **kw: dio.atomic_write_bytes(p, b"x", **kw),
             "text": lambda p, **kw: dio.atomic_write_text(p, "x", **kw),
             "json": lambda p, **kw: dio.atomic_write_json(p, {"x": 1}, **kw)}[how]
    write(tmp_path / "private")
    write(tmp_path / "shared", mode=0o644)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600  # mkstemp's mode, kept
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644


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


# --------------------------------------------------------------------------------------------------
# Leftovers of interrupted writes, and the preflights of a command that will write


def test_temporary_names_are_recognised_and_only_they() -> None:
    import tempfile

    fd, made = tempfile.mkstemp(prefix=".metrics.csv.", suffix=".tmp")  # exactly what atomic_open creates
    os.close(fd)
    os.unlink(made)
    assert dio.is_temp_file(Path(made).name)
    assert dio.is_temp_file(".tmpAb3dE9")  # safetensors' own writer: ".tmp" and 6 random characters
    for name in ("metrics.csv", ".tmp", "a.tmp", ".a.tmp", ".tmpAb3dE", ".tmpAb3dE9x", "..tmp", "x.metrics.a.tmp"):
        assert not dio.is_temp_file(name), name


def test_remove_temp_files_takes_only_leftovers_down_to_the_given_depth(tmp_path) -> None:
    keep = [tmp_path / "model.safetensors", tmp_path / "checkpoints" / "last.safetensors",
            tmp_path / "checkpoints" / "deep" / ".x.json.abc.tmp"]  # two levels down: beyond depth 1
    gone = [tmp_path / ".result.json.k2j4.tmp", tmp_path / "checkpoints" / ".tmpQw3rTy"]
    for path in keep + gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (tmp_path / ".folder.named.like.tmp").mkdir()  # a folder, not a leftover
    (tmp_path / ".link.abc.tmp").symlink_to(tmp_path / "model.safetensors")  # a link is never deleted
    removed = dio.remove_temp_files(tmp_path)
    assert sorted(removed) == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert (tmp_path / ".folder.named.like.tmp").is_dir() and (tmp_path / ".link.abc.tmp").is_symlink()
    assert dio.remove_temp_files(tmp_path, depth=2) == [keep[2]]
    assert dio.remove_temp_files(tmp_path / "missing") == []


def test_remove_temp_files_reports_every_subfolder_and_never_follows_links(tmp_path, monkeypatch) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside"
    gone = [run / "a" / ".m.json.x1.tmp", run / "b" / ".m.json.x2.tmp", run / "c" / ".m.json.x3.tmp"]
    for path in [*gone, outside / ".other.json.x4.tmp"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (run / "linked").symlink_to(outside, target_is_directory=True)  # another folder's files are not ours
    vanished = run / ".raced.json.x5.tmp"
    vanished.write_text("x")
    real_unlink = os.unlink

    def unlink(path):  # another process removed this one between the listing and the unlink
        if Path(path) == vanished:
            real_unlink(path)
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    assert sorted(dio.remove_temp_files(run)) == sorted(gone)
    assert (outside / ".other.json.x4.tmp").exists()
    assert dio.remove_temp_files(tmp_path / "model.safetensors") == []  # a file, not a folder


def test_check_writable_dir(tmp_path) -> None:
    from dltricks.errors import StorageError

    dio.check_writable_dir(tmp_path)
    dio.check_writable_dir(tmp_path / "new" / "run")  # does not exist yet: its existing ancestor is writable
    assert not (tmp_path / "new").exists()  # and nothing was created
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="exists and is not a folder"):
        dio.check_writable_dir(tmp_path / "file")
    with pytest.raises(StorageError, match="is a file") as raised:
        dio.check_writable_dir(tmp_path / "file" / "run")
    assert raised.value.errno == errno.ENOTDIR
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(StorageError):
            dio.check_writable_dir(tmp_path / "ro" / "run")


@pytest.mark.parametrize("flags,code", [(0, errno.EACCES), (os.ST_RDONLY, errno.EROFS), (None, errno.EACCES)])
def test_check_writable_dir_tells_permission_from_a_read_only_disk(tmp_path, monkeypatch, flags, code) -> None:
    """No write permission (EACCES), or a read-only mount (EROFS), simulated: the tests may run as root."""
    from dltricks.errors import StorageError

    asked, mounts = [], []
    monkeypatch.setattr(os, "access", lambda path, mode: asked.append((Path(path), mode)) and False)

    def statvfs(path):
        mounts.append(Path(path))
        if flags is None:
            raise OSError(38, "Function not implemented")  # cannot tell: permission denied it is
        return SimpleNamespace(f_flag=flags | os.ST_NOSUID)

    monkeypatch.setattr(os, "statvfs", statvfs)
    with pytest.raises(StorageError) as raised:
        dio.check_writable_dir(tmp_path / "run")
    # The closest existing folder is asked for write and search permission (to create entries in it), and its
    # file system for the read-only flag.
    assert asked == [(tmp_path, os.W_OK | os.X_OK)] and mounts == [tmp_path]
    assert raised.value.errno == code
    assert str(raised.value).startswith(f"{tmp_path / 'run'} (in {tmp_path}): ")
    with pytest.raises(StorageError) as raised:
        dio.check_writable_dir(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path}: ") and raised.value.errno == code


def test_check_free_space(tmp_path, monkeypatch) -> None:
    import shutil

    from dltricks.errors import StorageError

    dio.check_free_space(tmp_path / "run", 1, "a checkpoint")
    with pytest.raises(StorageError, match="not enough free space for a checkpoint"):
        dio.check_free_space(tmp_path / "run", 2 ** 62, "a checkpoint")

    disk = SimpleNamespace(total=10 * 2**20, used=7 * 2**20, free=3 * 2**20)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk)
    dio.check_free_space(tmp_path, 3 * 2**20, "a checkpoint")  # exactly what is free: enough
    with pytest.raises(StorageError) as raised:
        dio.check_free_space(tmp_path / "run", 5 * 2**20, "the weights")
    assert str(raised.value) == (f"{tmp_path / 'run'}: not enough free space for the weights: about 5.0 MiB needed, "
                                 "3.0 MiB free; free some space or choose another disk")

    def unknown(path):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(shutil, "disk_usage", unknown)
    dio.check_free_space(tmp_path, 2 ** 62, "a checkpoint")  # cannot tell: no error, the writes will say
