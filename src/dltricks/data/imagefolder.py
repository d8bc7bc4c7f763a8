"""Any image-folder classification data set, given as a folder or a ``.zip``, decoded into memory.

Layout (the one ``torchvision.datasets.ImageFolder`` reads, with one folder per split)::

    root/train/<class>/<image>.jpg|png|...      training images, one folder per class
    root/test/<class>/<image>                   evaluation images ("val", "valid" or "validation" also work)

``root`` may also be wrapped in one top folder, as in ``cifar10-jpg.zip`` whose entries are
``cifar10-jpg/train/airplane/0000.jpg``... Classes are the sub-folders of ``train/`` in sorted order
(their index is the label); images may sit in deeper sub-folders of their class folder. Hidden files
(``.DS_Store``...) and ``__MACOSX/`` entries are ignored; any other file that is not an image, or an
image that does not decode, is a :class:`~dltricks.errors.DataError` naming it, as are a corrupted zip,
an empty data set, a class folder without images and a test class unknown to the training split.

Images are decoded with Pillow to ``uint8``. All images must have one size unless ``image_size`` is
given (then each is resized, bilinear). If every image is grayscale the result has one channel,
otherwise three (grayscale images are replicated, alpha is dropped).

Decoding is the slow part (about 0.1 ms per 32x32 JPEG, some 6-10 s for CIFAR-10's 60,000 on one core),
so the decoded arrays and the training split's statistics are cached as ``.npy`` files under the
cache folder, keyed by the source's path, size and mtime (see :mod:`dltricks.data.files`); later loads
take well under a second.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dltricks.data.base import ArrayDataset, channel_stats
from dltricks.data.files import load_cached_arrays, save_cached_arrays
from dltricks.errors import DataError
from dltricks.utils.progress import ProgressBar

__all__ = ["IMAGE_EXTENSIONS", "EVAL_SPLITS", "load_image_folder", "list_image_folder"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                              ".pbm"})
EVAL_SPLITS = ("test", "val", "valid", "validation")
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
# Bump when decoding changes (colour handling, resizing...) so stale caches are not reused.
_DECODE_VERSION = 1


@dataclass(frozen=True)
class _Entry:
    split: str
    label: int
    name: str  # path shown in messages, e.g. "cifar10-jpg.zip:cifar10-jpg/train/cat/0001.jpg"
    key: str  # zip member name or file path


def _ignored(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1] in ("Thumbs.db", "desktop.ini")


class _Source:
    """Uniform listing/reading of a folder or a zip archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.files = _walk(path)
            self.dirs = sorted(_walk_dirs(path))
        elif path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                raise DataError(f"{path}: not a readable zip archive ({err}); expected a folder or a .zip with "
                                "train/<class>/<image> entries (is the file truncated or corrupted?)") from err
            names = self.zip.namelist()
            self.files = sorted(n for n in names if not n.endswith("/"))
            dirs = {n.rstrip("/") for n in names if n.endswith("/")}
            for parent in {n.rpartition("/")[0] for n in self.files}:
                while parent and parent not in dirs:  # every ancestor folder of every file
                    dirs.add(parent)
                    parent = parent.rpartition("/")[0]
            self.dirs = sorted(dirs)
        else:
            raise DataError(f"image folder {path} does not exist; expected a folder or a .zip with "
                            "train/<class>/<image> files")

    def display(self, key: str) -> str:
        return f"{self.path}:{key}" if self.zip is not None else str(self.path / key)

    def read(self, key: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(key)
            return (self.path / key).read_bytes()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
            raise DataError(f"{self.display(key)}: cannot read ({err}); the archive or file is corrupted") from err

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _walk(root: Path) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        out += [name if rel == "." else f"{rel}/{name}" for name in sorted(files)]
    return [o.replace(os.sep, "/") for o in out]


def _walk_dirs(root: Path) -> list[str]:
    out = []
    for folder, dirs, _ in os.walk(root):
        rel = os.path.relpath(folder, root)
        out += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in dirs]
    return out


def _find_prefix(source: _Source) -> str:
    """The folder (``""`` or e.g. ``"cifar10-jpg/"``) that holds ``train/``: the shallowest one."""
    candidates = set()
    for d in source.dirs:
        parts = d.split("/")
        if parts[-1] == "train" and not _ignored(parts):
            candidates.add("/".join(parts[:-1]))
    if not candidates:
        raise DataError(f"{source.path}: no train/ folder found; expected train/<class>/<image> (and "
                        "test/<class>/<image>) at the top or inside one top folder")
    shallowest = min(candidates, key=lambda c: (c.count("/") + (c != ""), c))
    return f"{shallowest}/" if shallowest else ""


def _check_class_count(classes: tuple[str, ...], where: str) -> None:
    if not classes:
        raise DataError(f"{where}: no class folders; expected train/<class>/<image>")
    if len(classes) == 1:  # every prediction would be right: "100 %" that measures nothing
        raise DataError(f"{where}: only one class folder ({classes[0]!r}); a classifier needs at least two, "
                        "expected train/<class>/<image> for two or more classes")


def list_image_folder(source: _Source) -> tuple[tuple[str, ...], dict[str, list[_Entry]]]:
    """Class names and the image entries of each split found (``"train"`` and ``"test"``)."""
    if not any(not _ignored(f.split("/")) for f in source.files):
        raise DataError(f"image data set {source.path} is empty (no files); expected train/<class>/<image> files")
    prefix = _find_prefix(source)
    split_dirs = {d[len(prefix):] for d in source.dirs if d.startswith(prefix) and "/" not in d[len(prefix):]}
    eval_split = next((s for s in EVAL_SPLITS if s in split_dirs), None)
    class_dirs = {d[len(prefix) + len("train/"):] for d in source.dirs if d.startswith(f"{prefix}train/")}
    classes = tuple(sorted(c for c in class_dirs if "/" not in c and not _ignored((c,))))
    _check_class_count(classes, source.display(prefix + "train"))
    index = {c: i for i, c in enumerate(classes)}
    entries: dict[str, list[_Entry]] = {"train": [], "test": []}
    counts = dict.fromkeys(classes, 0)
    for folder, split in (("train", "train"), (eval_split, "test")):
        if folder is None:
            continue
        base = f"{prefix}{folder}/"
        for key in source.files:
            if not key.startswith(base):
                continue
            parts = key[len(base):].split("/")
            if _ignored(key.split("/")):
                continue
            if len(parts) < 2:
                raise DataError(f"{source.display(key)} is not inside a class folder; expected "
                                f"{folder}/<class>/<image>")
            if os.path.splitext(parts[-1])[1].lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"{source.display(key)} is not an image file; expected only images "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}/<class>/")
            if parts[0] not in index:
                raise DataError(f"{source.display(key)}: class {parts[0]!r} of {folder}/ has no folder in train/; "
                                f"expected one of {', '.join(classes)}")
            entries[split].append(_Entry(split, index[parts[0]], source.display(key), key))
            if split == "train":
                counts[parts[0]] += 1
    if not entries["train"]:
        raise DataError(f"image data set {source.path} is empty: no images under train/<class>/")
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{source.display(prefix + 'train')}: class folder(s) {', '.join(empty)} have no images; "
                        "expected at least one image per class")
    if eval_split is not None and not entries["test"]:
        raise DataError(f"{source.display(prefix + eval_split)} has no images; expected {eval_split}/<class>/<image>")
    return classes, {k: v for k, v in entries.items() if v}


def _decode(source: _Source, entries: list[_Entry], image_size: tuple[int, int] | None,
            bar: ProgressBar, state: dict[str, object]) -> np.ndarray:
    """Decode ``entries`` into ``uint8 (N, H, W, 3)``; ``state`` carries the expected size and whether all
    images so far were grayscale."""
    out: np.ndarray | None = None
    # Read archive members in the order they are stored (sequential I/O), write each to its slot.
    order = range(len(entries))
    if source.zip is not None:
        offsets = {info.filename: info.header_offset for info in source.zip.infolist()}
        order = sorted(order, key=lambda i: offsets[entries[i].key])
    for done, i in enumerate(order, 1):
        entry = entries[i]
        try:
            with Image.open(io.BytesIO(source.read(entry.key))) as image:
                if image_size is not None:
                    image.draft("RGB", (image_size[1], image_size[0]))  # JPEG: decode at a reduced scale
                image.load()
                gray = image.mode in _GRAY_MODES
                rgb = image.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{entry.name}: not a valid image ({err}); expected a decodable image file") from err
        state["all_gray"] = bool(state["all_gray"]) and gray
        if image_size is not None:
            if rgb.size != (image_size[1], image_size[0]):
                rgb = rgb.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
        elif state["size"] is None:
            state["size"] = rgb.size
        elif rgb.size != state["size"]:
            w, h = state["size"]  # type: ignore[misc]
            raise DataError(f"{entry.name} is {rgb.size[0]}x{rgb.size[1]} pixels but earlier images are {w}x{h}; all "
                            "images must have one size, or pass image_size=N to resize them")
        pixels = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
        if out is None:
            out = np.empty((len(entries), *pixels.shape), dtype=np.uint8)
        out[i] = pixels
        if done % 1000 == 0 or done == len(entries):
            bar.advance(1000 if done % 1000 == 0 else done % 1000)
    assert out is not None
    return out


def _normalize_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"image_size: got {image_size!r}, expected a positive integer or (height, width)")
    return size  # type: ignore[return-value]


def load_image_folder(path: str | os.PathLike[str], *, image_size: int | Sequence[int] | None = None,
                      name: str | None = None, use_cache: bool = True,
                      progress: bool | None = None) -> dict[str, ArrayDataset]:
    """Load an image-folder data set (folder or ``.zip``) into ``{"train": ..., "test": ...}``.

    ``"test"`` is present when the source has a ``test/`` (or ``val/``...) split. Both splits carry the
    training split's per-channel mean and std. ``name`` defaults to the source's file name without
    extension.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"image folder {path} does not exist; expected a folder or a .zip with "
                        "train/<class>/<image> files")
    size = _normalize_size(image_size)
    name = name or (path.name[: -len(path.suffix)] if path.suffix == ".zip" else path.name)
    options = {"image_size": list(size) if size else None, "decode_version": _DECODE_VERSION}
    cached = load_cached_arrays(f"imagefolder-{name}", path, options) if use_cache else None
    if cached is not None:
        arrays, info = cached
    else:
        arrays, info = _decode_all(path, size, name, progress)
        if use_cache:
            save_cached_arrays(f"imagefolder-{name}", path, arrays, info, options)
    classes, mean, std = tuple(info["classes"]), tuple(info["mean"]), tuple(info["std"])
    return {split: ArrayDataset(torch.from_numpy(arrays[f"{split}_images"]),
                                torch.from_numpy(arrays[f"{split}_labels"]),
                                classes, f"{name}/{split}", mean, std)
            for split in ("train", "test") if f"{split}_images" in arrays}


def _decode_all(path: Path, size: tuple[int, int] | None, name: str,
                progress: bool | None) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    source = _Source(path)
    try:
        classes, entries = list_image_folder(source)
        total = sum(len(e) for e in entries.values())
        state: dict[str, object] = {"size": None, "all_gray": True}
        decoded = {}
        with ProgressBar(total, f"decoding {path.name}", enabled=progress) as bar:
            for split, items in entries.items():
                decoded[split] = (_decode(source, items, size, bar, state),
                                  np.array([e.label for e in items], dtype=np.int64))
    finally:
        source.close()
    arrays: dict[str, np.ndarray] = {}
    for split, (images, labels) in decoded.items():
        # (N, H, W, 3) -> (N, C, H, W); keep one channel when every image was grayscale.
        chw = images[..., :1] if state["all_gray"] else images
        arrays[f"{split}_images"] = np.ascontiguousarray(chw.transpose(0, 3, 1, 2))
        arrays[f"{split}_labels"] = labels
    mean, std = channel_stats(arrays["train_images"])
    info = {"classes": list(classes), "mean": list(mean), "std": list(std), "source": str(path)}
    return arrays, info

