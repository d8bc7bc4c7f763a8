"""CIFAR-10 from the official "python version" tarball (Krizhevsky, "Learning multiple layers of
features from tiny images", 2009; https://www.cs.toronto.edu/~kriz/cifar.html).

``cifar-10-python.tar.gz`` (MD5 ``c58f30108f718f92721af3b95e74349a``) holds ``cifar-10-batches-py/``
with five training batches ``data_batch_1..5`` and ``test_batch`` of 10,000 images each, plus
``batches.meta`` with the class names. Each batch is a pickled dict with ``data``, a ``uint8`` array
``(10000, 3072)`` (a 32x32 red plane, then green, then blue, rows top to bottom), and ``labels``.

Pickles can run arbitrary code when loaded, so we never call ``pickle.load`` with the default
unpickler: :class:`_SafeUnpickler` resolves only the few names that rebuild a numpy array
(``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``...); any other global in the
stream is refused with a :class:`~dltricks.errors.DataError` before anything is called.

Decoded arrays are cached as ``.npy`` under the cache folder (see :mod:`dltricks.data.files`), so the
tarball is read once. The image-folder copy ``cifar10-jpg.zip`` is read by :mod:`dltricks.data.imagefolder`.

Statistics: mean (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616) on the 50,000 training
images of the official pickles; :func:`load_cifar10` computes them from the training split it loads.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dltricks.data.base import ArrayDataset, channel_stats
from dltricks.data.files import (cache_dir, check_md5, data_roots, download, load_cached_arrays,
                                 md5_file, missing_data_message, save_cached_arrays)
from dltricks.errors import DataError

__all__ = ["CIFAR10_URL", "CIFAR10_MD5", "CIFAR10_CLASSES", "CIFAR10_TARBALL", "find_cifar10_python",
           "read_cifar10_python", "load_cifar10", "load_cifar10_splits", "download_cifar10", "safe_unpickle"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_SUBDIRS = ("cifar10", "cifar-10", "CIFAR10")

# The only globals a CIFAR batch pickle needs: numpy's array reconstruction (its module moved to
# numpy._core in numpy 2; numpy 1 pickles, like the official ones, name numpy.core), the protocol-5
# variant (_frombuffer) and the latin-1 re-encoding of byte strings that protocol-2 pickles written by
# Python 3 use.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def _numpy_global(name: str) -> Any:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    return {"_reconstruct": multiarray._reconstruct, "_frombuffer": numeric._frombuffer}[name]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, strings and numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module == "_codecs":
            return _latin1_encode
        if module == "numpy":
            return getattr(np, name)
        return _numpy_global(name)


def safe_unpickle(data: bytes, *, source: str) -> Any:
    """Unpickle ``data`` allowing only builtin containers/scalars and numpy arrays.

    A pickle that names any other global (``os.system``, ``builtins.eval``...) is refused with a
    :class:`DataError` naming ``source``; nothing in it is called.
    """
    try:
        # The official batches were pickled by Python 2: 'latin1' maps its byte strings 1:1 (numpy's advice).
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{source}: refused to unpickle ({err}); expected a CIFAR batch holding only numpy arrays, "
                        "lists and strings") from err
    except (EOFError, ValueError, TypeError, IndexError, AttributeError, KeyError, MemoryError) as err:
        raise DataError(f"{source}: corrupted pickle ({type(err).__name__}: {err})") from err


def _get(batch: Mapping[Any, Any], key: str, source: str) -> Any:
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise DataError(f"{source}: no {key!r} entry; expected a CIFAR-10 batch dict with 'data' and 'labels'")


def _parse_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(data, source=source)
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a dict, got {type(batch).__name__}")
    images = np.asarray(_get(batch, "data", source))
    labels = np.asarray(_get(batch, "labels", source))
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataError(f"{source}: 'data' has dtype {images.dtype} and shape {images.shape}; expected uint8 "
                        "(N, 3072)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: {labels.shape} labels of dtype {labels.dtype} for {images.shape[0]} images; "
                        "expected one integer label per image")
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)  # (N, C, H, W): planes are R, G, B


def _is_tarball(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def read_cifar10_python(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the tarball or an extracted ``cifar-10-batches-py`` folder into
    ``{"train_images", "train_labels", "test_images", "test_labels"}`` (images ``uint8 (N, 3, 32, 32)``)."""
    path = Path(path)
    members: dict[str, bytes] = {}
    wanted = (*_TRAIN_BATCHES, _TEST_BATCH)
    if path.is_dir():
        for name in wanted:
            file = path / name
            if not file.is_file():
                raise DataError(f"{path}: missing {name}; expected the extracted {CIFAR10_FOLDER} folder with "
                                f"{', '.join(wanted)}")
            members[name] = file.read_bytes()
    else:
        try:
            with tarfile.open(path, "r:*") as archive:
                for info in archive:
                    base = info.name.rsplit("/", 1)[-1]
                    if info.isfile() and base in wanted:
                        handle = archive.extractfile(info)
                        members[base] = handle.read() if handle is not None else b""
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"{path}: corrupted or truncated tar archive ({err}); expected {CIFAR10_TARBALL}") from err
        missing = [n for n in wanted if n not in members]
        if missing:
            raise DataError(f"{path}: the archive lacks {', '.join(missing)}; expected {CIFAR10_TARBALL}")
    train = [_parse_batch(members[n], f"{path}:{n}") for n in _TRAIN_BATCHES]
    test_images, test_labels = _parse_batch(members[_TEST_BATCH], f"{path}:{_TEST_BATCH}")
    return {
        "train_images": np.concatenate([b[0] for b in train]),
        "train_labels": np.concatenate([b[1] for b in train]),
        "test_images": test_images,
        "test_labels": test_labels,
    }


def find_cifar10_python(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The official tarball or extracted folder, if any, per the lookup order of :mod:`dltricks.data.files`."""

    def accept(p: Path) -> bool:
        return ((p.is_dir() and (p / "data_batch_1").is_file())
                or (p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar"))))

    roots = data_roots(data_dir)
    for root in roots:
        if root.is_file() and accept(root):
            return root
        for candidate in (root / CIFAR10_TARBALL, root / CIFAR10_FOLDER,
                          *(root / s / CIFAR10_TARBALL for s in _SUBDIRS),
                          *(root / s / CIFAR10_FOLDER for s in _SUBDIRS)):
            if candidate.exists() and accept(candidate):
                return candidate
        if root.is_dir() and accept(root):
            return root
    return None


def load_cifar10_splits(path: str | os.PathLike[str] | None = None, *, verify: bool = True,
                        data_dir: str | os.PathLike[str] | None = None) -> dict[str, ArrayDataset]:
    """Both CIFAR-10 splits, ``{"train": 50,000, "test": 10,000}`` images ``uint8 (N, 3, 32, 32)``, from the
    official python tarball or its extracted folder.

    ``path`` names the tarball/folder; otherwise it is looked up under ``data_dir`` / ``DLTRICKS_DATA`` /
    the default folders. The tarball's MD5 is checked (``verify=False`` skips it) when it is first
    decoded; later calls read the cached arrays.
    """
    source = Path(path) if path is not None else find_cifar10_python(data_dir)
    if source is None:
        raise DataError(missing_data_message("CIFAR-10", f"{CIFAR10_TARBALL} or {CIFAR10_FOLDER}/", data_dir, _SUBDIRS,
                                             "download it with `python -m dltricks.data download cifar10`"))
    if not source.exists():
        raise DataError(f"CIFAR-10 source {source} does not exist; expected {CIFAR10_TARBALL} or {CIFAR10_FOLDER}/")
    # An entry made without the MD5 check is never used for a verified load.
    verified = verify and source.is_file()
    options = {"md5_verified": verified}
    cached = load_cached_arrays("cifar10-python", source, options)
    if cached is None:
        if verified:
            check_md5(md5_file(source), CIFAR10_MD5, str(source))
        arrays = read_cifar10_python(source)
        mean, std = channel_stats(arrays["train_images"])
        info = {"classes": list(CIFAR10_CLASSES), "mean": list(mean), "std": list(std)}
        save_cached_arrays("cifar10-python", source, arrays, info, options)
    else:
        arrays, info = cached
    return {split: ArrayDataset(torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_images"])),
                                torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)), tuple(info["classes"]),
                                f"cifar10/{split}", tuple(info["mean"]), tuple(info["std"]))
            for split in ("train", "test")}


def load_cifar10(split: str = "train", path: str | os.PathLike[str] | None = None, *,
                 verify: bool = True, data_dir: str | os.PathLike[str] | None = None) -> ArrayDataset:
    """One CIFAR-10 split ("train" or "test"); see :func:`load_cifar10_splits`."""
    if split not in ("train", "test"):
        raise DataError(f"unknown CIFAR-10 split {split!r}; expected 'train' or 'test'")
    return load_cifar10_splits(path, verify=verify, data_dir=data_dir)[split]


def download_cifar10(root: str | os.PathLike[str] | None = None, *, progress: bool | None = None) -> Path:
    """Download the official tarball to ``root`` (default ``$DLTRICKS_CACHE/data``), MD5-verified."""
    folder = Path(root) if root is not None else cache_dir() / "data"
    return download([CIFAR10_URL], folder / CIFAR10_TARBALL, md5=CIFAR10_MD5, progress=progress)
