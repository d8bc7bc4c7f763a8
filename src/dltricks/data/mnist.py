"""MNIST from the official IDX files (LeCun, Cortes & Burges, http://yann.lecun.com/exdb/mnist/).

The IDX format: a 4-byte magic number ``00 00 TT DD`` (``TT`` the element type, ``0x08`` = unsigned
byte; ``DD`` the number of dimensions), then ``DD`` big-endian ``int32`` sizes, then the elements in
row-major order. MNIST has two image files (``idx3``: ``N x 28 x 28`` bytes) and two label files
(``idx1``: ``N`` bytes), 60,000 training and 10,000 test samples.

Files may be gzip-compressed or not, whatever their names say (we look at the magic bytes). Before any
array is used we check the header (magic, element type, number of dimensions, and that the file holds
exactly the bytes the header announces) and then the MD5 of the *uncompressed* bytes against the
published digests, so a truncated, corrupted or foreign file is a :class:`~dltricks.errors.DataError`
(:class:`~dltricks.errors.ChecksumError` for a digest mismatch) naming the file and what was expected.

The 10,000-image official test split also ships inside the package (``dltricks/data/embedded``, see
the README there) so that ``make run`` works offline: :func:`load_mnist_embedded` splits it into 8,000
training and 2,000 validation images by a fixed, library-independent permutation.

Normalisation uses the customary MNIST statistics, mean 0.1307 and std 0.3081 (of the 60,000 training
images in [0, 1] units, as in the PyTorch MNIST example); ``tests/test_data_mnist.py`` recomputes them
from the real files (0.13066 / 0.30811).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from dltricks.data.base import ArrayDataset, channel_stats
from dltricks.data.files import (cache_dir, check_md5, data_roots, download, find_in_roots, md5_bytes,
                                 missing_data_message)
from dltricks.errors import DataError

__all__ = ["MNIST_FILES", "MNIST_MD5", "MNIST_MIRRORS", "MNIST_MEAN", "MNIST_STD", "MNIST_CLASSES",
           "EMBEDDED_TRAIN_SIZE", "decode_idx", "read_idx", "find_mnist", "load_mnist", "download_mnist",
           "load_mnist_embedded", "embedded_split"]

# (split, kind) -> official file name (without .gz).
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# MD5 of the uncompressed files, as published with the data set.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_SIZES = {"train": 60_000, "test": 10_000}
# The official site first, then a mirror that serves the same gzip files.
MNIST_MIRRORS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = tuple(str(d) for d in range(10))
_SUBDIRS = ("mnist", "MNIST/raw")

# IDX element type code -> numpy dtype (multi-byte types are big-endian).
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _decompress(raw: bytes, source: str) -> bytes:
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as err:
        raise DataError(f"{source}: gzip data is truncated ({err}); expected a complete gzip-compressed IDX file "
                        "(delete it and download it again)") from err
    except (OSError, zlib.error) as err:
        raise DataError(f"{source}: gzip data is corrupted ({err}); expected a gzip-compressed IDX file") from err


def decode_idx(raw: bytes, *, source: str, md5: str | None = None, ndim: int | None = None) -> np.ndarray:
    """Parse the IDX bytes ``raw`` (gzip-compressed or not) into a numpy array.

    Args:
        source: file name used in error messages.
        md5: expected MD5 of the uncompressed bytes (checked after the header).
        ndim: expected number of dimensions.
    """
    data = _decompress(raw, source)
    if len(data) < 4:
        raise DataError(f"{source}: {len(data)} bytes is too short for an IDX file; expected at least a 4-byte magic "
                        "number")
    zero, type_code, dims = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _IDX_TYPES:
        raise DataError(f"{source}: not an IDX file (magic number {data[:4].hex()}); expected 0000TTDD with TT an "
                        "IDX element type such as 08 for unsigned bytes")
    if ndim is not None and dims != ndim:
        raise DataError(f"{source}: IDX header says {dims} dimensions, expected {ndim}")
    header_size = 4 + 4 * dims
    if len(data) < header_size:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes); expected {header_size} header bytes for "
                        f"{dims} dimensions")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=dims, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{source}: IDX file {problem}: header announces shape {shape} ({expected:,} bytes with the "
                        f"header) but the {'uncompressed ' if raw[:2] == _GZIP_MAGIC else ''}file has "
                        f"{len(data):,} bytes")
    if md5 is not None:
        check_md5(md5_bytes(data), md5, f"{source} (uncompressed)")
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)  # read-only view of `data`
    return array.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else array


def read_idx(path: str | os.PathLike[str], *, md5: str | None = None, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not); see :func:`decode_idx`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    return decode_idx(raw, source=str(path), md5=md5, ndim=ndim)


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four MNIST files, per the lookup order of :mod:`dltricks.data.files`."""
    names = list(MNIST_FILES.values())
    folder = find_in_roots(data_roots(data_dir), _SUBDIRS,
                           lambda p: p.is_dir() and any(_file_in(p, n) for n in names))
    if folder is None:
        raise DataError(missing_data_message(
            "MNIST", "train-images-idx3-ubyte[.gz] and the other official IDX files", data_dir, _SUBDIRS,
            "download them with `python -m dltricks.data download mnist`"))
    missing = [n for n in names if _file_in(folder, n) is None]
    if missing:
        raise DataError(f"MNIST folder {folder} lacks {', '.join(missing)} (or their .gz); expected all four "
                        f"official files: {', '.join(names)}")
    return folder


def load_mnist(split: str = "train", data_dir: str | os.PathLike[str] | None = None, *,
               verify: bool = True) -> ArrayDataset:
    """The official MNIST ``split`` ("train": 60,000 images, "test": 10,000) as ``uint8 (N, 1, 28, 28)``.

    ``verify=False`` skips the MD5 check (for modified copies); the header checks always run.
    """
    if split not in MNIST_SIZES:
        raise DataError(f"unknown MNIST split {split!r}; expected 'train' or 'test'")
    folder = find_mnist(data_dir)
    files = {kind: _file_in(folder, MNIST_FILES[split, kind]) for kind in ("images", "labels")}
    images = read_idx(files["images"], ndim=3, md5=MNIST_MD5[MNIST_FILES[split, "images"]] if verify else None)
    labels = read_idx(files["labels"], ndim=1, md5=MNIST_MD5[MNIST_FILES[split, "labels"]] if verify else None)
    return _to_dataset(images, labels, f"mnist/{split}", files["images"], files["labels"], MNIST_MEAN, MNIST_STD)


def _to_dataset(images: np.ndarray, labels: np.ndarray, name: str, images_src: object, labels_src: object,
                mean: tuple[float, ...], std: tuple[float, ...]) -> ArrayDataset:
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{images_src} / {labels_src}: MNIST files must hold unsigned bytes (IDX type 08), got "
                        f"{images.dtype} and {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_src} has {images.shape[0]:,} images but {labels_src} has {labels.shape[0]:,} "
                        "labels; expected the same number")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    return ArrayDataset(x, y, MNIST_CLASSES, name, mean, std)


def _verify_download(path: Path, name: str) -> None:
    read_idx(path, md5=MNIST_MD5[name], ndim=3 if "idx3" in name else 1)


def download_mnist(root: str | os.PathLike[str] | None = None, *, progress: bool | None = None) -> Path:
    """Download the four official files (gzip) to ``root`` (default ``$DLTRICKS_CACHE/data/mnist``), each
    verified against the published MD5 of its uncompressed bytes before it is renamed into place."""
    folder = Path(root) if root is not None else cache_dir() / "data" / "mnist"
    for name in MNIST_FILES.values():
        if _file_in(folder, name) is not None:
            continue
        download([f"{base}{name}.gz" for base in MNIST_MIRRORS], folder / f"{name}.gz",
                 verify=lambda tmp, name=name: _verify_download(tmp, name), progress=progress)
    return folder


# --- the copy embedded in the package ---------------------------------------------------------------------

EMBEDDED_TRAIN_SIZE = 8_000
_EMBEDDED_SALT = b"dltricks-mnist-embedded:"


def embedded_split(num: int = 10_000, train_size: int = EMBEDDED_TRAIN_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the embedded set's training and validation parts.

    The 10,000 test images are ordered by the first 8 bytes of SHA-256(``"dltricks-mnist-embedded:<i>"``)
    and the first 8,000 form the training part. Unlike a seeded RNG this order cannot change with a
    torch or numpy release.
    """
    order = torch.tensor(_embedded_order(num), dtype=torch.int64)
    return order[:train_size], order[train_size:]


@functools.lru_cache(maxsize=4)
def _embedded_order(num: int) -> tuple[int, ...]:
    keys = [hashlib.sha256(_EMBEDDED_SALT + str(i).encode()).digest()[:8] for i in range(num)]
    return tuple(sorted(range(num), key=keys.__getitem__))


def _embedded_bytes(name: str) -> bytes:
    return importlib.resources.files("dltricks.data").joinpath("embedded", f"{name}.gz").read_bytes()


@functools.lru_cache(maxsize=2)
def _embedded_arrays(verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """The decoded embedded images and labels, decoded once per process (read-only: every dataset built from
    them copies them). The evidence engine builds this data set for each of its ~150 short training runs."""
    names = MNIST_FILES["test", "images"], MNIST_FILES["test", "labels"]
    sources = [f"dltricks/data/embedded/{n}.gz" for n in names]
    images = decode_idx(_embedded_bytes(names[0]), source=sources[0], ndim=3,
                        md5=MNIST_MD5[names[0]] if verify else None)
    labels = decode_idx(_embedded_bytes(names[1]), source=sources[1], ndim=1,
                        md5=MNIST_MD5[names[1]] if verify else None)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_mnist_embedded(split: str = "train", *, verify: bool = True) -> ArrayDataset:
    """The MNIST test split shipped in the package: "train" (8,000 images), "val" (2,000) or "all" (10,000).

    Normalisation statistics are those of the 8,000 training images (computed on load, a few ms).
    """
    if split not in ("train", "val", "all"):
        raise DataError(f"unknown split {split!r} of mnist-embedded; expected 'train', 'val' or 'all'")
    names = MNIST_FILES["test", "images"], MNIST_FILES["test", "labels"]
    sources = [f"dltricks/data/embedded/{n}.gz" for n in names]
    images, labels = _embedded_arrays(verify)
    full = _to_dataset(images, labels, "mnist-embedded", sources[0], sources[1], MNIST_MEAN, MNIST_STD)
    train_idx, val_idx = embedded_split(len(full))
    mean, std = channel_stats(full.images.index_select(0, train_idx))
    full = ArrayDataset(full.images, full.labels, full.classes, "mnist-embedded", mean, std)
    if split == "all":
        return full
    return full.subset(train_idx if split == "train" else val_idx, name=f"mnist-embedded/{split}")
