"""Where data sets are looked up, where decoded arrays are cached, checksums and downloads.

Lookup order for a data set's files (first match wins):

1. the ``data_dir`` argument (``--data-dir`` on the command line): a folder or file that must exist;
2. the ``DLTRICKS_DATA`` environment variable: a folder that must exist;
3. the default folders that exist, in this order: ``./data`` (relative to the working directory),
   ``$DLTRICKS_CACHE/data`` (where downloads go, ``~/.cache/dltricks/data`` by default) and
   ``../shared/data`` next to a source checkout of dltricks.

Inside each folder a data set looks for its files directly and in its own sub-folder (``mnist/``,
``cifar-10-batches-py/``...). Decoded arrays are cached under :func:`cache_dir` (``$DLTRICKS_CACHE``,
else ``$XDG_CACHE_HOME/dltricks``, else ``~/.cache/dltricks``), never next to the source data, which may be
read-only. A cache entry is keyed by the source's resolved path, size and modification time plus a
format version, written atomically, and re-created whenever any of these change or it fails to load.

Downloads stream to a temporary file in the destination folder, are verified against the published
MD5, and only then renamed into place, so an interrupted or corrupted download never leaves a file
that looks complete. Nothing here is called by the tests (they run offline on local copies).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dltricks.errors import ChecksumError, DataError
from dltricks.utils.io import atomic_open, atomic_write_json

__all__ = ["CACHE_FORMAT_VERSION", "cache_dir", "default_data_dirs", "data_roots", "find_in_roots", "md5_bytes",
           "md5_file", "check_md5", "download", "source_fingerprint", "load_cached_arrays", "save_cached_arrays",
           "missing_data_message"]

# Bump when the layout or meaning of cached arrays changes: old entries are then ignored.
CACHE_FORMAT_VERSION = 1

# src/dltricks/data/files.py -> the checkout root is three levels above the package folder.
_CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    """``$DLTRICKS_CACHE``, else ``$XDG_CACHE_HOME/dltricks``, else ``~/.cache/dltricks``."""
    if os.environ.get("DLTRICKS_CACHE"):
        return Path(os.environ["DLTRICKS_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "dltricks"
    return Path.home() / ".cache" / "dltricks"


def default_data_dirs() -> list[Path]:
    """The default folders searched when neither ``data_dir`` nor ``DLTRICKS_DATA`` is given."""
    return [Path.cwd() / "data", cache_dir() / "data", _CHECKOUT_ROOT.parent / "shared" / "data"]


def data_roots(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders (or one file) to search, per the lookup order in the module docstring.

    An explicit ``data_dir`` or ``DLTRICKS_DATA`` that does not exist is an error right away, rather than
    a silent fall-back to another copy of the data.
    """
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise DataError(f"data directory {str(path)!r} does not exist; pass --data-dir with the folder that "
                            "holds the data set files (or set DLTRICKS_DATA)")
        return [path]
    env = os.environ.get("DLTRICKS_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise DataError(f"DLTRICKS_DATA={env!r} does not exist; set it to the folder that holds the data "
                            "set files, or pass --data-dir")
        return [path]
    return [p for p in default_data_dirs() if p.is_dir()]


def find_in_roots(roots: Iterable[Path], subdirs: Sequence[str],
                  accept: Callable[[Path], bool]) -> Path | None:
    """The first ``root`` or ``root/<subdir>`` for which ``accept(path)`` is true."""
    for root in roots:
        for candidate in [root, *(root / s for s in subdirs)]:
            if candidate.exists() and accept(candidate):
                return candidate
    return None


def missing_data_message(what: str, expected: str, data_dir: str | os.PathLike[str] | None,
                         subdirs: Sequence[str], download_hint: str) -> str:
    """One message saying what was missing, where we looked and how to point at the files."""
    if data_dir is not None and str(data_dir) != "":
        looked = [Path(data_dir).expanduser()]
    elif os.environ.get("DLTRICKS_DATA"):
        looked = [Path(os.environ["DLTRICKS_DATA"]).expanduser()]
    else:
        looked = default_data_dirs()
    places = ", ".join(str(p) for p in looked)
    subs = ", ".join(f"{s}/" for s in subdirs)
    return (f"{what} not found: looked for {expected} in {places} (and their {subs} sub-folders); "
            f"point at the files with --data-dir DIR or DLTRICKS_DATA=DIR, or {download_hint}")


# --- checksums ------------------------------------------------------------------------------------------


def md5_bytes(data: bytes | memoryview) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def check_md5(actual: str, expected: str, what: str) -> None:
    """Raise :class:`ChecksumError` naming ``what`` unless the digests match."""
    if actual.lower() != expected.lower():
        raise ChecksumError(f"{what}: MD5 {actual} does not match the published {expected}; the file is corrupted "
                            "or not the official one (delete it and download it again)")


# --- downloads ------------------------------------------------------------------------------------------


def download(urls: Sequence[str], dest: str | os.PathLike[str], *, md5: str | None = None,
             verify: Callable[[Path], None] | None = None, timeout: float = 60.0,
             progress: bool | None = None) -> Path:
    """Download the first of ``urls`` that works to ``dest``, verified, atomically.

    The bytes go to a temporary file next to ``dest``; ``md5`` (of the downloaded bytes) and/or
    ``verify(tmp_path)`` (which raises :class:`DataError` when the content is wrong) are checked before the
    rename. A failed URL (network error or bad content) falls through to the next mirror; if all fail the
    error lists each URL with its reason. An existing ``dest`` is returned as is.
    """
    from dltricks.utils.progress import ProgressBar

    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            request = urllib.request.Request(url, headers={"User-Agent": "dltricks"})
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0)
                with ProgressBar(total or 1, f"download {dest.name}", enabled=progress) as bar:
                    while block := response.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                        bar.advance(len(block) if total else 0)
                out.flush()
                os.fsync(out.fileno())
            if md5 is not None:
                check_md5(digest.hexdigest(), md5, f"download of {url}")
            if verify is not None:
                verify(tmp)
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException, ValueError, DataError) as err:  # URLError is an OSError
            failures.append(f"{url}: {getattr(err, 'reason', None) or err}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    raise DataError(f"could not download {dest.name}: " + "; ".join(failures))


# --- cache of decoded arrays ----------------------------------------------------------------------------


def source_fingerprint(source: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a source's content cheaply: resolved path, size and mtime (for a folder, of every
    file below it)."""
    path = Path(source).resolve()
    if path.is_dir():
        digest = hashlib.sha256()
        count = 0
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                stat = os.stat(os.path.join(folder, name))
                digest.update(f"{os.path.relpath(os.path.join(folder, name), path)}\0{stat.st_size}\0"
                              f"{stat.st_mtime_ns}\n".encode())
                count += 1
        return {"path": str(path), "kind": "folder", "files": count, "listing": digest.hexdigest()}
    stat = path.stat()
    return {"path": str(path), "kind": "file", "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _entry_dir(name: str, fingerprint: Mapping[str, Any], options: Mapping[str, Any]) -> Path:
    key = json.dumps({"version": CACHE_FORMAT_VERSION, "source": fingerprint, "options": options}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / "arrays" / f"{name}-{digest}"


def load_cached_arrays(name: str, source: str | os.PathLike[str], options: Mapping[str, Any] | None = None,
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays and metadata cached for ``source`` (decoded with ``options``), or ``None`` on a miss.

    A damaged entry counts as a miss (it is rebuilt); arrays are loaded with ``allow_pickle=False``.
    """
    entry = _entry_dir(name, source_fingerprint(source), dict(options or {}))
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {}
        for key, spec in meta["arrays"].items():
            array = np.load(entry / f"{key}.npy", allow_pickle=False)
            if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
                return None
            arrays[key] = array
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return arrays, meta.get("info", {})


def save_cached_arrays(name: str, source: str | os.PathLike[str], arrays: Mapping[str, np.ndarray],
                       info: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> Path | None:
    """Cache ``arrays`` (one ``.npy`` each) and ``info`` for ``source``; ``meta.json`` is written last,
    so a half-written entry is never read. Returns the entry folder, or ``None`` if the cache folder is
    not writable (caching is an optimisation, never a reason to fail)."""
    fingerprint = source_fingerprint(source)
    entry = _entry_dir(name, fingerprint, dict(options or {}))
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for key, array in arrays.items():
            with atomic_open(entry / f"{key}.npy", "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        meta = {"version": CACHE_FORMAT_VERSION, "source": fingerprint, "options": dict(options or {}),
                "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()},
                "info": dict(info)}
        atomic_write_json(entry / "meta.json", meta)
    except OSError:
        with contextlib.suppress(OSError):
            shutil.rmtree(entry)
        return None
    return entry
