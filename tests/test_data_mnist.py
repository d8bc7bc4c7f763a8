"""MNIST on the real IDX files: shapes, labels, statistics, checksums, corrupted copies, file lookup."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dltricks.data import files, mnist
from dltricks.data.base import channel_stats
from dltricks.data.mnist import (MNIST_FILES, MNIST_MD5, decode_idx, download_mnist, embedded_split, find_mnist,
                                 load_mnist, load_mnist_embedded, read_idx)
from dltricks.errors import ChecksumError, DataError


@pytest.fixture(scope="module")
def mnist_dir(shared_data: Path) -> Path:
    return shared_data / "mnist"


@pytest.fixture
def copy_dir(mnist_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the four official files."""
    out = tmp_path / "mnist"
    out.mkdir()
    for f in mnist_dir.glob("*.gz"):
        shutil.copyfile(f, out / f.name)
    return out


def test_train_and_test_splits(mnist_dir):
    for split, n in (("train", 60000), ("test", 10000)):
        ds = load_mnist(split, mnist_dir)
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
        assert ds.labels.min() == 0 and ds.labels.max() == 9
        assert ds.num_classes == 10 and ds.classes == tuple("0123456789")
        assert ds.images.max() == 255 and ds.images.min() == 0
    # Published per-digit test counts (the familiar 980 zeros, 1135 ones...).
    assert ds.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_normalisation_constants_match_the_training_split(mnist_dir):
    train = load_mnist("train", mnist_dir)
    mean, std = channel_stats(train.images)
    assert round(mean[0], 4) == mnist.MNIST_MEAN[0] == train.mean[0]
    assert round(std[0], 4) == mnist.MNIST_STD[0] == train.std[0]


def test_official_md5_of_uncompressed_files(mnist_dir):
    for name, digest in MNIST_MD5.items():
        assert files.md5_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes())) == digest


def test_embedded_copy_is_the_official_test_split(mnist_dir):
    test = load_mnist("test", mnist_dir)
    full = load_mnist_embedded("all")
    assert torch.equal(full.images, test.images) and torch.equal(full.labels, test.labels)
    train, val = load_mnist_embedded("train"), load_mnist_embedded("val")
    assert len(train) == 8000 and len(val) == 2000
    train_idx, val_idx = embedded_split()
    assert sorted(torch.cat([train_idx, val_idx]).tolist()) == list(range(10000))
    assert torch.equal(train.images, test.images[train_idx]) and torch.equal(val.labels, test.labels[val_idx])
    # Documented in dltricks/data/embedded/README.md.
    assert train.labels.bincount().tolist() == [764, 902, 830, 820, 790, 707, 769, 818, 794, 806]
    assert train.mean == val.mean and round(train.mean[0], 5) == 0.13253 and round(train.std[0], 5) == 0.31054
    with pytest.raises(DataError, match="split"):
        load_mnist_embedded("test")


# --- corrupted and foreign files -----------------------------------------------------------------------

def _uncompress(folder: Path, name: str) -> Path:
    """Replace ``name.gz`` by the uncompressed ``name``; returns its path."""
    raw = gzip.decompress((folder / f"{name}.gz").read_bytes())
    (folder / f"{name}.gz").unlink()
    (folder / name).write_bytes(raw)
    return folder / name


def test_uncompressed_files_load_too(copy_dir):
    for name in MNIST_FILES.values():
        _uncompress(copy_dir, name)
    assert len(load_mnist("test", copy_dir)) == 10000


def test_gzip_is_detected_by_magic_bytes_not_by_name(copy_dir):
    path = _uncompress(copy_dir, "t10k-labels-idx1-ubyte")
    path.rename(copy_dir / "t10k-labels-idx1-ubyte.gz")  # plain IDX under a .gz name
    assert len(load_mnist("test", copy_dir)) == 10000


def test_flipped_byte_fails_the_checksum(copy_dir):
    path = _uncompress(copy_dir, "t10k-images-idx3-ubyte")
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF  # a pixel, the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte.*MD5 [0-9a-f]{32} does not match .*2646ac64"):
        load_mnist("test", copy_dir)
    assert len(load_mnist("test", copy_dir, verify=False)) == 10000  # verify=False skips only the digest


def test_truncated_file_names_expected_size(copy_dir):
    path = _uncompress(copy_dir, "t10k-images-idx3-ubyte")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: IDX file truncated: .*\(10000, 28, 28\).*7,840,016 "
                                         r"bytes.*7,839,916 bytes"):
        load_mnist("test", copy_dir)


def test_truncated_and_corrupted_gzip(copy_dir):
    path = copy_dir / "t10k-labels-idx1-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: gzip data is truncated"):
        load_mnist("test", copy_dir)
    broken = bytearray(raw)
    broken[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(broken))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: (gzip data is corrupted|.*MD5)"):
        load_mnist("test", copy_dir)


def test_header_checks():
    good = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    assert decode_idx(good, source="x", ndim=1).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="x: not an IDX file"):
        decode_idx(b"\x01\x02\x08\x01" + good[4:], source="x")
    with pytest.raises(DataError, match="not an IDX file"):
        decode_idx(b"\x00\x00\x07\x01" + good[4:], source="x")
    with pytest.raises(DataError, match="1 dimensions, expected 3"):
        decode_idx(good, source="x", ndim=3)
    with pytest.raises(DataError, match="too short"):
        decode_idx(b"\x00", source="x")
    with pytest.raises(DataError, match="truncated IDX header"):
        decode_idx(b"\x00\x00\x08\x03\x00\x00", source="x")
    with pytest.raises(DataError, match="trailing bytes"):
        decode_idx(good + b"\x00", source="x")
    # Multi-byte big-endian types decode to native numbers.
    ints = b"\x00\x00\x0c\x01" + (2).to_bytes(4, "big") + (7).to_bytes(4, "big") + (-5).to_bytes(4, "big", signed=True)
    assert decode_idx(ints, source="y").tolist() == [7, -5]


def test_swapped_files_are_caught_by_the_header(copy_dir):
    images, labels = copy_dir / "t10k-images-idx3-ubyte.gz", copy_dir / "t10k-labels-idx1-ubyte.gz"
    shutil.copyfile(images, labels)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: IDX header says 3 dimensions, expected 1"):
        load_mnist("test", copy_dir)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_labels_out_of_range(copy_dir):
    labels = read_idx(copy_dir / "t10k-labels-idx1-ubyte.gz").copy()
    labels[1234] = 12
    _write_idx(copy_dir / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ChecksumError):
        load_mnist("test", copy_dir)
    with pytest.raises(DataError, match=r"label 12 at index 1234 is out of range; expected labels in \[0, 10\)"):
        load_mnist("test", copy_dir, verify=False)


def test_image_and_label_counts_must_agree(copy_dir):
    labels = read_idx(copy_dir / "t10k-labels-idx1-ubyte.gz")[:9000]
    _write_idx(copy_dir / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match="10,000 images but .* 9,000 labels"):
        load_mnist("test", copy_dir, verify=False)


# --- where files are looked up -------------------------------------------------------------------------

def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"data directory '.*nowhere' does not exist; pass --data-dir"):
        load_mnist("train", tmp_path / "nowhere")
    monkeypatch.setenv("DLTRICKS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"DLTRICKS_DATA=.*nowhere.* does not exist"):
        load_mnist("train")


def test_folder_without_mnist_says_where_it_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"MNIST not found: looked for .* in .*empty.*--data-dir DIR or "
                                        r"DLTRICKS_DATA=DIR.*download"):
        load_mnist("train", tmp_path / "empty")


def test_incomplete_folder_lists_missing_files(copy_dir):
    (copy_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks train-labels-idx1-ubyte"):
        load_mnist("test", copy_dir)


def test_lookup_order(copy_dir, mnist_dir, tmp_path, monkeypatch):
    root = copy_dir.parent  # holds mnist/
    monkeypatch.setenv("DLTRICKS_DATA", str(root))
    assert find_mnist() == copy_dir  # DLTRICKS_DATA, found in its mnist/ sub-folder
    assert find_mnist(mnist_dir) == mnist_dir  # an explicit folder wins over the variable
    monkeypatch.delenv("DLTRICKS_DATA")
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copytree(copy_dir, work / "data" / "mnist")
    monkeypatch.chdir(work)
    assert files.default_data_dirs()[0] == work / "data"
    assert find_mnist() == work / "data" / "mnist"  # ./data is the first default folder


def test_download_is_atomic_and_verified(copy_dir, mnist_dir, tmp_path, monkeypatch):
    # file:// URLs exercise the real download code without a network.
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", (f"file://{tmp_path}/no-such-mirror/", f"file://{mnist_dir}/"))
    target = tmp_path / "downloaded"
    assert download_mnist(target, progress=False) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES.values())
    assert len(load_mnist("test", target)) == 10000
    # A mirror serving a corrupted file: nothing is left behind, and the error names each URL.
    data = bytearray(gzip.decompress((copy_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    data[100] ^= 1
    (copy_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(data)))
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", (f"file://{copy_dir}/",))
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError, match=r"could not download t10k-labels-idx1-ubyte.gz: file://.*MD5"):
        download_mnist(fresh, progress=False)
    assert not (fresh / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list(fresh.glob(".*.part"))
