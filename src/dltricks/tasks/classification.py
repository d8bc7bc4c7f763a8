"""Image classification tasks for the trainer: ``--data mnist | mnist-embedded | cifar10 | imagefolder``.

Each builder follows :func:`dltricks.tasks.base.register_task`'s contract::

    builder(*, batch_size, eval_batch_size=None, data_dir=None, seed=0, augment=None, rank=0, world_size=1,
            device="cpu", subset=None, val_subset=None, subset_seed=0, download=False, **_) -> Task

and returns a :class:`~dltricks.tasks.base.Task` whose loaders are :class:`TensorLoader` objects:

* training: shuffled every epoch, augmented per ``augment`` (an :class:`AugmentConfig` or a mapping of its
  fields), last incomplete batch dropped (BatchNorm cannot train on a batch of one; the dropped samples
  differ every epoch) unless the training split is smaller than one batch per rank;
* validation: in order, no augmentation, ``eval_batch_size`` (default ``batch_size``), nothing dropped.

``subset=N`` keeps N training samples and ``val_subset=M`` M validation samples (quick runs and tests),
drawn at random but class-stratified (every class keeps its share, :func:`~dltricks.data.base.stratified_indices`)
by a permutation seeded with ``subset_seed`` (default 0, independent of ``seed`` so that runs with different
seeds see the same samples). The draw is recorded in ``task.extra["subset"]`` / ``["val_subset"]``
(``{"size", "of", "seed"}``). Both loaders normalise with the training split's per-channel statistics (of the
whole split, not of the subset), also found in ``task.extra["mean"]`` / ``["std"]``.

Data sets:

* ``mnist``: the official 60,000 training / 10,000 test images (the test split is the validation set),
  from ``data_dir`` / ``DLTRICKS_DATA`` / the default folders (see :mod:`dltricks.data.files`);
  ``download=True`` fetches missing files into ``data_dir`` (or the cache folder).
* ``mnist-embedded``: the 10,000 official test images shipped in the package, split 8,000 / 2,000 by a
  fixed permutation (see ``dltricks/data/embedded/README.md``); needs no files, used by ``make run``.
* ``cifar10``: the official python tarball (or its extracted ``cifar-10-batches-py/``), else an image-folder
  copy such as ``cifar10-jpg.zip``; ``data_dir`` may name the file/folder itself or a folder holding it.
* ``imagefolder``: any ``train/<class>/*`` + ``test/<class>/*`` data set; ``data_dir`` names the folder or
  ``.zip`` (required); ``image_size=N`` resizes images that differ in size.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dltricks.data.augment import AugmentConfig
from dltricks.data.base import ArrayDataset
from dltricks.data.cifar import (CIFAR10_FOLDER, CIFAR10_TARBALL, download_cifar10, find_cifar10_python,
                                 load_cifar10_splits)
from dltricks.data.files import data_roots, missing_data_message
from dltricks.data.imagefolder import load_image_folder
from dltricks.data.loader import TensorLoader
from dltricks.data.mnist import download_mnist, find_mnist, load_mnist, load_mnist_embedded
from dltricks.errors import ConfigError, DataError
from dltricks.tasks.base import Task, register_task

__all__ = ["make_classification_task", "find_cifar10"]

_CIFAR_FOLDER_NAMES = ("cifar10-jpg.zip", "cifar10-jpg", "cifar10.zip", "cifar10")


def _check_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: got {value!r}, expected a positive integer (or none)")
    return value


def make_classification_task(name: str, train: ArrayDataset, val: ArrayDataset | None, *, batch_size: int,
                             eval_batch_size: int | None = None, seed: int = 0,
                             augment: AugmentConfig | Mapping[str, Any] | None = None, rank: int = 0,
                             world_size: int = 1, device: str | torch.device = "cpu", subset: int | None = None,
                             val_subset: int | None = None, subset_seed: int = 0,
                             extra: Mapping[str, Any] | None = None) -> Task:
    """A :class:`Task` over in-memory training and validation sets (see the module docstring)."""
    subset, val_subset = _check_count("subset", subset), _check_count("val_subset", val_subset)
    if not isinstance(subset_seed, int) or isinstance(subset_seed, bool):
        raise ConfigError(f"subset_seed: got {subset_seed!r}, expected an integer")
    drawn: dict[str, Any] = {}
    if subset is not None:
        drawn["subset"] = {"size": min(subset, len(train)), "of": len(train), "seed": subset_seed}
        train = train.sample(subset, seed=subset_seed)
    if val is not None and val_subset is not None:
        drawn["val_subset"] = {"size": min(val_subset, len(val)), "of": len(val), "seed": subset_seed}
        val = val.sample(val_subset, seed=subset_seed)
    if val is not None and (val.in_chans, val.image_size) != (train.in_chans, train.image_size):
        raise DataError(f"{name}: validation images {tuple(val.images.shape[1:])} differ from training images "
                        f"{tuple(train.images.shape[1:])}")
    per_rank = -(-len(train) // world_size)
    train_loader = TensorLoader(train, batch_size=batch_size, shuffle=True, drop_last=per_rank >= batch_size,
                                augment=augment, device=device, seed=seed, rank=rank, world_size=world_size)
    val_loader = None
    if val is not None:
        val_loader = TensorLoader(val, batch_size=eval_batch_size or batch_size, shuffle=False, drop_last=False,
                                  device=device, seed=seed, rank=rank, world_size=world_size)
    return Task(
        name=name,
        train_loader=train_loader,
        val_loader=val_loader,
        num_classes=train.num_classes,
        in_chans=train.in_chans,
        classes=train.classes,
        input_shape=tuple(train.images.shape[1:]),
        extra={"mean": train.mean, "std": train.std, "train_size": len(train),
               "val_size": len(val) if val is not None else 0, **drawn, **dict(extra or {})},
    )


_LOADER_OPTIONS = ("batch_size", "eval_batch_size", "seed", "augment", "rank", "world_size", "device", "subset",
                   "val_subset", "subset_seed")


def _task_options(options: dict[str, Any]) -> dict[str, Any]:
    """The loader options among a builder's keyword arguments (others, meant for other tasks, are ignored)."""
    if "batch_size" not in options:
        raise ConfigError("batch_size is required to build a data task")
    return {k: options[k] for k in _LOADER_OPTIONS if k in options}


@register_task("mnist", help="MNIST, official 60k train / 10k test IDX files (--data-dir or DLTRICKS_DATA)")
def mnist_task(*, data_dir: str | os.PathLike[str] | None = None, download: bool = False, **options: Any) -> Task:
    """MNIST, official 60k train / 10k test IDX files (--data-dir or DLTRICKS_DATA)."""
    try:
        train = load_mnist("train", data_dir)
    except DataError:
        if not download:
            raise
        download_mnist(data_dir)
        train = load_mnist("train", data_dir)
    val = load_mnist("test", data_dir)
    return make_classification_task("mnist", train, val, extra={"source": str(find_mnist(data_dir))},
                                    **_task_options(options))


@register_task("mnist-embedded", help="MNIST test split shipped in the package: 8,000 train / 2,000 val (offline)")
def mnist_embedded_task(**options: Any) -> Task:
    """MNIST test split shipped in the package: 8,000 train / 2,000 val (offline)."""
    return make_classification_task("mnist-embedded", load_mnist_embedded("train"), load_mnist_embedded("val"),
                                    extra={"source": "dltricks/data/embedded"}, **_task_options(options))


def _is_image_folder(path: Path) -> bool:
    return (path.is_file() and zipfile.is_zipfile(path)) or (path.is_dir() and (path / "train").is_dir())


def find_cifar10(data_dir: str | os.PathLike[str] | None = None) -> tuple[str, Path]:
    """``("python", path)`` for the official tarball/folder, else ``("imagefolder", path)`` for a zip/folder.

    ``data_dir`` may name the tarball, the extracted folder, the zip or image folder, or a folder
    holding one of them.
    """
    python = find_cifar10_python(data_dir)
    if python is not None:
        return "python", python
    for root in data_roots(data_dir):
        if root.is_file():
            if tarfile.is_tarfile(root):
                return "python", root
            if zipfile.is_zipfile(root):
                return "imagefolder", root
            raise DataError(f"{root}: neither a tar archive ({CIFAR10_TARBALL}) nor a zip of image folders")
        if _is_image_folder(root):
            return "imagefolder", root
        for name in _CIFAR_FOLDER_NAMES:
            if _is_image_folder(root / name):
                return "imagefolder", root / name
    raise DataError(missing_data_message(
        "CIFAR-10", f"{CIFAR10_TARBALL}, {CIFAR10_FOLDER}/ or an image-folder copy ({', '.join(_CIFAR_FOLDER_NAMES)})",
        data_dir, ("cifar10",), "download the official tarball with `python -m dltricks.data download cifar10`"))


@register_task("cifar10", help="CIFAR-10 (official python tarball or an image-folder zip such as cifar10-jpg.zip)")
def cifar10_task(*, data_dir: str | os.PathLike[str] | None = None, download: bool = False, **options: Any) -> Task:
    """CIFAR-10 (official python tarball or an image-folder zip such as cifar10-jpg.zip)."""
    try:
        kind, path = find_cifar10(data_dir)
    except DataError:
        if not download:
            raise
        kind, path = "python", download_cifar10(data_dir)
    if kind == "python":
        splits = load_cifar10_splits(path)
        train, val = splits["train"], splits["test"]
    else:
        splits = load_image_folder(path)
        train, val = splits["train"], splits.get("test")
        if train.num_classes != 10 or train.in_chans != 3 or train.image_size != (32, 32):
            raise DataError(f"{path}: {train.num_classes} classes of {train.in_chans}x{train.image_size[0]}x"
                            f"{train.image_size[1]} images is not CIFAR-10 (expected 10 classes of 3x32x32); "
                            "use --data imagefolder for other image folders")
    return make_classification_task("cifar10", train, val, extra={"source": str(path)}, **_task_options(options))


@register_task("imagefolder", help="any train/<class>/ + test/<class>/ image folder or .zip given by --data-dir")
def imagefolder_task(*, data_dir: str | os.PathLike[str] | None = None, image_size: int | None = None,
                     **options: Any) -> Task:
    """Any train/<class>/ + test/<class>/ image folder or .zip given by --data-dir."""
    if data_dir is None or str(data_dir) == "":
        raise DataError("the imagefolder data set needs --data-dir pointing at a folder or .zip with "
                        "train/<class>/<image> (and test/<class>/<image>) files")
    splits = load_image_folder(data_dir, image_size=image_size)
    name = splits["train"].name.rsplit("/", 1)[0]
    return make_classification_task(name, splits["train"], splits.get("test"), extra={"source": str(data_dir)},
                                    **_task_options(options))
