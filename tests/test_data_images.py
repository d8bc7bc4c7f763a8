"""Image folders (directories and zips, incl. the real CIFAR-10 JPEG zip), the decoded-array cache and
the CIFAR-10 python tarball (safe unpickling)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dltricks.data import imagefolder
from dltricks.data.cifar import CIFAR10_CLASSES, load_cifar10, read_cifar10_python, safe_unpickle
from dltricks.data.files import cache_dir
from dltricks.data.imagefolder import load_image_folder
from dltricks.errors import ChecksumError, DataError
from dltricks.tasks.base import build_task

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def small_cifar_zip(shared_data: Path, tmp_path: Path, per_class: int = 2, *, top: str = "cifar10-jpg/") -> Path:
    """A zip with the real layout and the first ``per_class`` real JPEGs of every class and split."""
    out = tmp_path / "small-cifar.zip"
    with zipfile.ZipFile(shared_data / "cifar10-jpg.zip") as src, zipfile.ZipFile(out, "w") as dst:
        for split in ("train", "test"):
            for cls in CLASSES:
                for i in range(per_class):
                    name = f"cifar10-jpg/{split}/{cls}/{i:04d}.jpg"
                    dst.writestr(top + name[len("cifar10-jpg/"):], src.read(name))
    return out


def write_png(path: Path, size: tuple[int, int] = (8, 6), mode: str = "RGB", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = (np.arange(size[0] * size[1] * channels).reshape(size[1], size[0], channels) * 7 + value) % 256
    Image.fromarray(pixels.astype(np.uint8).squeeze(-1) if channels == 1 else pixels.astype(np.uint8), mode).save(path)


def make_folder(root: Path, classes=("a", "b"), per_class: int = 2, **kw) -> Path:
    for split in ("train", "test"):
        for c in classes:
            for i in range(per_class):
                write_png(root / split / c / f"{i}.png", value=i + 10 * len(c), **kw)
    return root


# --- small image folders -------------------------------------------------------------------------------

def test_small_zip_from_the_real_data(shared_data, tmp_path):
    path = small_cifar_zip(shared_data, tmp_path, per_class=3)
    splits = load_image_folder(path)
    train, test = splits["train"], splits["test"]
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (30, 3, 32, 32)
    assert train.classes == CLASSES and train.labels.tolist() == [i // 3 for i in range(30)]
    assert train.labels.dtype == torch.int64 and test.labels.max() == 9
    # Pixel-exact against Pillow: training image 4 is class 1 (automobile), file 0001.
    with zipfile.ZipFile(path) as z:
        expected = np.array(Image.open(io.BytesIO(z.read("cifar10-jpg/train/automobile/0001.jpg"))).convert("RGB"))
    assert torch.equal(train.images[4], torch.from_numpy(expected).permute(2, 0, 1))
    assert train.mean == test.mean and len(train.mean) == 3


def test_folder_and_zip_give_the_same_arrays(shared_data, tmp_path):
    path = small_cifar_zip(shared_data, tmp_path, per_class=2, top="")  # no top folder this time
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp_path / "folder")
    from_zip, from_dir = load_image_folder(path), load_image_folder(tmp_path / "folder")
    for split in ("train", "test"):
        assert torch.equal(from_zip[split].images, from_dir[split].images)
        assert torch.equal(from_zip[split].labels, from_dir[split].labels)


def test_cache_is_used_and_never_next_to_the_source(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "src")
    before = sorted(p for p in root.rglob("*"))
    first = load_image_folder(root)
    assert sorted(p for p in root.rglob("*")) == before, "nothing is written next to the source"
    entries = list((cache_dir() / "arrays").glob("imagefolder-src-*"))
    assert entries and all((e / "meta.json").is_file() for e in entries)

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(imagefolder, "_decode_all", fail)
    again = load_image_folder(root)
    assert torch.equal(again["train"].images, first["train"].images) and again["train"].mean == first["train"].mean
    # Changing the source invalidates the entry.
    write_png(root / "train" / "a" / "new.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(root)


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "src2")
    first = load_image_folder(root)
    for npy in (cache_dir() / "arrays").glob("imagefolder-src2-*/train_images.npy"):
        npy.write_bytes(b"garbage")
    assert torch.equal(load_image_folder(root)["train"].images, first["train"].images)


def test_grayscale_and_mixed_folders(tmp_path):
    gray = load_image_folder(make_folder(tmp_path / "gray", mode="L"))
    assert gray["train"].in_chans == 1 and len(gray["train"].mean) == 1
    mixed = make_folder(tmp_path / "mixed", mode="L")
    write_png(mixed / "train" / "b" / "color.png", mode="RGBA")
    splits = load_image_folder(mixed)
    assert splits["train"].in_chans == 3 and len(splits["train"]) == 5
    # Grayscale images become three equal channels.
    first = splits["train"].images[0]
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])


def test_sizes_must_agree_unless_resized(tmp_path):
    root = make_folder(tmp_path / "sizes")
    write_png(root / "train" / "b" / "big.png", size=(12, 9))
    with pytest.raises(DataError, match=r"big.png is 12x9 pixels but earlier images are 8x6.*image_size"):
        load_image_folder(root)
    resized = load_image_folder(root, image_size=(5, 7))
    assert resized["train"].images.shape == (5, 3, 5, 7)


def test_hidden_files_are_ignored_and_only_train_is_required(tmp_path):
    root = tmp_path / "hidden"
    for c in ("x", "y"):
        write_png(root / "train" / c / "0.png")
    (root / "train" / ".DS_Store").write_bytes(b"\x00junk")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._0.png").write_bytes(b"junk")
    splits = load_image_folder(root)
    assert set(splits) == {"train"} and splits["train"].classes == ("x", "y")


def test_val_folder_serves_as_test_split(tmp_path):
    root = tmp_path / "valsplit"
    for split in ("train", "val"):
        for c in ("x", "y"):
            write_png(root / split / c / "0.png")
    assert len(load_image_folder(root)["test"]) == 2


# --- bad image folders ---------------------------------------------------------------------------------

def test_non_image_file_is_named(tmp_path):
    root = make_folder(tmp_path / "bad")
    (root / "train" / "b" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"bad/train/b/notes.txt is not an image file"):
        load_image_folder(root)


def test_undecodable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "bad2")
    (root / "test" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(DataError, match=r"test/a/broken.png: not a valid image"):
        load_image_folder(root)


def test_non_image_inside_a_zip(shared_data, tmp_path):
    path = small_cifar_zip(shared_data, tmp_path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("cifar10-jpg/train/cat/readme.md", "not an image")
    with pytest.raises(DataError, match=r"small-cifar.zip:cifar10-jpg/train/cat/readme.md is not an image file"):
        load_image_folder(path)


def test_corrupted_and_truncated_zip(shared_data, tmp_path):
    path = small_cifar_zip(shared_data, tmp_path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated.zip: not a readable zip archive"):
        load_image_folder(truncated)
    # Damage a member's bytes (the central directory stays valid): the CRC check catches it.
    corrupted = tmp_path / "corrupted.zip"
    broken = bytearray(data)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("cifar10-jpg/train/bird/0001.jpg")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    broken[start] ^= 0xFF
    corrupted.write_bytes(bytes(broken))
    with pytest.raises(DataError, match=r"corrupted.zip:cifar10-jpg/train/bird/0001.jpg: .*(corrupted|CRC)"):
        load_image_folder(corrupted)


def test_empty_data_sets(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_image_folder(tmp_path / "empty")
    empty_zip = tmp_path / "empty.zip"
    zipfile.ZipFile(empty_zip, "w").close()
    with pytest.raises(DataError, match="is empty"):
        load_image_folder(empty_zip)
    for c in ("a", "b"):
        (tmp_path / "noimages" / "train" / c).mkdir(parents=True)
    with pytest.raises(DataError, match="noimages is empty"):
        load_image_folder(tmp_path / "noimages")
    write_png(tmp_path / "noimages" / "test" / "a" / "0.png")
    with pytest.raises(DataError, match="is empty: no images under train"):
        load_image_folder(tmp_path / "noimages")
    root = make_folder(tmp_path / "oneempty")
    (root / "train" / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) c have no images"):
        load_image_folder(root)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


def test_layout_errors(tmp_path):
    root = make_folder(tmp_path / "layout")
    write_png(root / "test" / "zebra" / "0.png")
    with pytest.raises(DataError, match=r"class 'zebra' of test/ has no folder in train/"):
        load_image_folder(root)
    root = make_folder(tmp_path / "loose")
    write_png(root / "train" / "loose.png")
    with pytest.raises(DataError, match=r"loose.png is not inside a class folder"):
        load_image_folder(root)
    (tmp_path / "notrain" / "images").mkdir(parents=True)
    write_png(tmp_path / "notrain" / "images" / "0.png")
    with pytest.raises(DataError, match="no train/ folder"):
        load_image_folder(tmp_path / "notrain")


# --- the real CIFAR-10 JPEG zip, decoded once ----------------------------------------------------------

@pytest.mark.xdist_group("cifar10-zip")  # one worker decodes the zip once; the next test reads its cache
def test_full_cifar10_zip_and_cache(shared_data):
    path = shared_data / "cifar10-jpg.zip"
    start = time.perf_counter()
    splits = load_image_folder(path)
    first_load = time.perf_counter() - start
    train, test = splits["train"], splits["test"]
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.labels.bincount().tolist() == [5000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    assert train.classes == CLASSES
    # Published statistics of the official pickles; the JPEG copy stays within 0.01 of them.
    np.testing.assert_allclose(train.mean, (0.4914, 0.4822, 0.4465), atol=0.01)
    np.testing.assert_allclose(train.std, (0.2470, 0.2435, 0.2616), atol=0.01)
    start = time.perf_counter()
    cached = load_image_folder(path)
    assert torch.equal(cached["test"].images, test.images)
    assert time.perf_counter() - start < first_load  # the second load reads the .npy cache
    task = build_task("cifar10", batch_size=256, data_dir=shared_data)  # found among the default names
    assert task.extra["source"].endswith("cifar10-jpg.zip") and task.extra["train_size"] == 50000


@pytest.mark.xdist_group("cifar10-zip")
def test_cifar10_subset_draws_every_class(shared_data):
    # The zip lists its images class by class: the first 2,000 would all be airplanes. `--subset 2000` (what
    # `dltricks train resnet18_cifar --data cifar10 --subset 2000` passes to prepare) draws every class.
    from dltricks.train import prepare

    _, task = prepare("resnet18_cifar", "cifar10", {"train": {"batch_size": 64}},
                      data_dir=shared_data / "cifar10-jpg.zip", subset=2000, device="cpu")
    counts = task.train_loader.dataset.labels.bincount(minlength=10).tolist()
    assert sum(counts) == 2000 and all(160 <= c <= 240 for c in counts), counts
    assert task.extra["subset"] == {"size": 2000, "of": 50000, "seed": 0}
    again = build_task("cifar10", batch_size=64, data_dir=shared_data / "cifar10-jpg.zip", subset=2000)
    assert torch.equal(again.train_loader.dataset.images, task.train_loader.dataset.images)  # the seed fixes it
    other = build_task("cifar10", batch_size=64, data_dir=shared_data / "cifar10-jpg.zip", subset=2000,
                       subset_seed=1)
    assert not torch.equal(other.train_loader.dataset.images, task.train_loader.dataset.images)


def test_cifar10_task_from_a_small_zip(shared_data, tmp_path):
    path = small_cifar_zip(shared_data, tmp_path, per_class=3)
    task = build_task("cifar10", batch_size=4, data_dir=path, augment={"crop_padding": 4, "hflip": True})
    assert task.num_classes == 10 and task.in_chans == 3 and task.input_shape == (3, 32, 32)
    assert task.classes[0] == "airplane" and task.extra["train_size"] == 30
    x, y = next(task.train_loader.iter_epoch(0))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    other = make_folder(tmp_path / "notcifar")
    with pytest.raises(DataError, match="is not CIFAR-10"):
        build_task("cifar10", batch_size=4, data_dir=other)
    task = build_task("imagefolder", batch_size=2, data_dir=other)
    assert task.num_classes == 2 and task.name == "notcifar"


# --- CIFAR-10 python tarball ---------------------------------------------------------------------------

def _s(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _i(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def py2_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR batch pickled byte for byte the way Python 2 + numpy 1.x wrote the official files
    (protocol 2, ``numpy.core.multiarray._reconstruct``, byte strings as ``str``)."""
    n = images.shape[0]
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _i(0) + b"\x85" + _s(b"b") + b"\x87R"
             + b"(" + _i(1) + _i(n) + _i(3072) + b"\x86"
             + b"cnumpy\ndtype\n" + _s(b"u1") + _i(0) + _i(1) + b"\x87R"
             + b"(" + _i(3) + _s(b"|") + b"NNN" + _i(-1) + _i(-1) + _i(0) + b"tb"
             + b"\x89" + _s(images.reshape(n, -1).tobytes()) + b"tb")
    label_list = b"](" + b"".join(_i(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + _s(b"batch_label") + _s(b"a batch") + _s(b"labels") + label_list
            + _s(b"data") + array + _s(b"filenames") + b"](" + _s(b"x.png") + b"e" + b"u.")


def make_tarball(path: Path, n: int = 4, *, evil: bytes | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"train": [], "test": []}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            data = py2_batch(images, labels)
            if evil is not None and name == "data_batch_3":
                data = evil
            arrays["test" if name == "test_batch" else "train"].append((images, labels))
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        meta = pickle.dumps({"label_names": list(CIFAR10_CLASSES)}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return {split: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v]))
            for split, v in arrays.items()}


def test_python_tarball_layout_is_parsed(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    expected = make_tarball(path)
    with pytest.raises(ChecksumError, match=r"cifar-10-python.tar.gz: MD5 .* does not match the published c58f3010"):
        load_cifar10("train", path)
    train = load_cifar10("train", path, verify=False)
    test = load_cifar10("test", path, verify=False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(expected["train"][0]))
    assert train.labels.tolist() == expected["train"][1].tolist() and train.classes == CIFAR10_CLASSES
    # The extracted folder reads the same.
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    arrays = read_cifar10_python(tmp_path / "x" / "cifar-10-batches-py")
    assert np.array_equal(arrays["test_images"], expected["test"][0])
    # The task prefers the official tarball when both copies are in one folder (MD5 is checked there).
    with pytest.raises(ChecksumError):
        build_task("cifar10", batch_size=4, data_dir=tmp_path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": _Exploit(marker), "labels": []}, protocol=2)
    with pytest.raises(DataError,
                       match=r"data_batch_3: refused to unpickle \(global (posix|os)\.system is not allowed\)"):
        safe_unpickle(evil, source="cifar-10-batches-py/data_batch_3")
    path = tmp_path / "evil.tar.gz"
    make_tarball(path, evil=evil)
    with pytest.raises(DataError, match="refused to unpickle"):
        load_cifar10("train", path, verify=False)
    assert not marker.exists()
    with pytest.raises(DataError, match="builtins.eval is not allowed"):
        safe_unpickle(b"\x80\x02cbuiltins\neval\n" + _s(b"1") + b"\x85R.", source="x")
    with pytest.raises(DataError, match="encoding 'zlib_codec' is not allowed"):
        safe_unpickle(b"\x80\x02c_codecs\nencode\n" + _s(b"x") + _s(b"zlib_codec") + b"\x86R.", source="x")


def test_truncated_tarball(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    make_tarball(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="corrupted or truncated tar archive|lacks"):
        load_cifar10("train", path, verify=False)
    shutil.rmtree(tmp_path, ignore_errors=True)
