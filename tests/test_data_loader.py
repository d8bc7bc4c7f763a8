"""ArrayDataset checks, TensorLoader determinism and sharding, and the registered tasks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from dltricks.config import ConfigError
from dltricks.data.augment import AugmentConfig
from dltricks.data.base import ArrayDataset, channel_stats
from dltricks.data.loader import TensorLoader, derive_seed
from dltricks.errors import DataError
from dltricks.tasks.base import build_task, list_tasks


def make_dataset(N: int = 103, C: int = 3, H: int = 8, W: int = 8, num_classes: int = 5) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, C, H, W), generator=g, dtype=torch.uint8)
    labels = torch.arange(N) % num_classes
    mean, std = channel_stats(images)
    return ArrayDataset(images, labels, tuple(f"c{i}" for i in range(num_classes)), "toy", mean, std)


# --- ArrayDataset --------------------------------------------------------------------------------------

def test_dataset_basic_properties():
    ds = make_dataset()
    assert len(ds) == 103 and ds.num_classes == 5 and ds.in_chans == 3 and ds.image_size == (8, 8)
    sub = ds.subset([3, 1, 4])
    assert torch.equal(sub.images, ds.images[[3, 1, 4]]) and sub.labels.tolist() == [3, 1, 4]
    assert sub.mean == ds.mean and sub.classes == ds.classes
    assert len(ds.subset(slice(0, 10))) == 10
    assert len(ds.subset(ds.labels == 0)) == 21


def test_dataset_rejects_empty():
    with pytest.raises(DataError, match="toy is empty"):
        ArrayDataset(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), ("a",), "toy",
                     (0.5,), (0.5,))
    with pytest.raises(DataError, match="empty"):
        make_dataset().subset([])


@pytest.mark.parametrize("bad", [5, -1, 17])
def test_dataset_rejects_labels_out_of_range(bad):
    labels = torch.zeros(10, dtype=torch.int64)
    labels[7] = bad
    with pytest.raises(DataError, match=rf"label {bad} at index 7 .*\[0, 5\)"):
        ArrayDataset(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), labels, tuple("abcde"), "toy", (0.5,), (0.5,))


def test_dataset_rejects_bad_dtypes_and_shapes():
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(DataError, match="uint8"):
        ArrayDataset(torch.zeros(4, 1, 4, 4), y, ("a",), "toy", (0.5,), (0.5,))
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        ArrayDataset(torch.zeros(4, 4, 4, dtype=torch.uint8), y, ("a",), "toy", (0.5,), (0.5,))
    with pytest.raises(DataError, match="4 images but 3 labels"):
        ArrayDataset(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), y[:3], ("a",), "toy", (0.5,), (0.5,))
    with pytest.raises(DataError, match="integers"):
        ArrayDataset(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), y.float(), ("a",), "toy", (0.5,), (0.5,))
    with pytest.raises(DataError, match="one per channel"):
        ArrayDataset(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), y, ("a",), "toy", (0.5,), (0.5,))


def test_channel_stats_against_direct_computation():
    ds = make_dataset()
    x = ds.images.double() / 255
    mean, std = channel_stats(ds.images, chunk=7)
    assert_close(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)))
    assert_close(torch.tensor(std, dtype=torch.float64), x.std(dim=(0, 2, 3), unbiased=False))


# --- TensorLoader --------------------------------------------------------------------------------------

def test_loader_batches_are_normalised_and_cover_the_data():
    ds = make_dataset()
    loader = TensorLoader(ds, batch_size=16)
    batches = list(loader.iter_epoch(0))
    assert len(loader) == len(batches) == 7 and loader.num_samples == 103
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (103, 3, 8, 8)
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    assert_close(x, (ds.images.float() / 255 - mean) / std)
    assert torch.equal(y, ds.labels)
    raw = torch.cat([b[0] for b in TensorLoader(ds, batch_size=16, normalize=False).iter_epoch(0)])
    assert_close(raw, ds.images.float() / 255)


def test_loader_drop_last():
    loader = TensorLoader(make_dataset(), batch_size=16, drop_last=True)
    assert len(loader) == 6 and loader.num_samples == 96
    assert all(x.shape[0] == 16 for x, _ in loader.iter_epoch(0))
    with pytest.raises(DataError, match="fewer than one batch"):
        TensorLoader(make_dataset(N=10), batch_size=16, drop_last=True)


def test_shuffle_differs_between_epochs_and_is_reproducible():
    ds = make_dataset()
    a = TensorLoader(ds, batch_size=103, shuffle=True, seed=1)
    b = TensorLoader(ds, batch_size=103, shuffle=True, seed=1)
    c = TensorLoader(ds, batch_size=103, shuffle=True, seed=2)
    assert torch.equal(a.order(0), b.order(0))
    assert not torch.equal(a.order(0), a.order(1))
    assert not torch.equal(a.order(0), c.order(0))
    assert sorted(a.order(3).tolist()) == list(range(103))
    # The spec'd recipe: randperm from a generator seeded by a hash of (seed, epoch).
    expected = torch.randperm(103, generator=torch.Generator().manual_seed(derive_seed(1, 3)))
    assert torch.equal(a.order(3), expected)


@pytest.mark.parametrize("augment", [None, AugmentConfig(crop_padding=2, hflip=True, rotate_degrees=15, cutout=3,
                                                         mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.7)])
def test_resume_from_start_batch_gives_the_tail_of_the_epoch(augment):
    ds = make_dataset()
    loader = TensorLoader(ds, batch_size=10, shuffle=True, augment=augment, seed=3)
    full = list(loader.iter_epoch(2))
    for k in (0, 1, 4, len(loader) - 1, len(loader)):
        # A fresh loader, as after a restart, must replay the same batches.
        resumed = list(TensorLoader(ds, batch_size=10, shuffle=True, augment=augment, seed=3)
                       .iter_epoch(2, start_batch=k))
        assert len(resumed) == len(full) - k
        for (x1, y1), (x2, y2) in zip(full[k:], resumed):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="start_batch"):
        next(loader.iter_epoch(0, start_batch=len(loader) + 1))


def test_augmentation_changes_between_epochs_and_soft_targets_under_mixup():
    ds = make_dataset()
    loader = TensorLoader(ds, batch_size=8, augment=AugmentConfig(hflip=True, crop_padding=2, mixup_alpha=1.0))
    (x0, y0), (x1, _) = next(loader.iter_epoch(0)), next(loader.iter_epoch(1))
    assert not torch.equal(x0, x1)  # same samples (no shuffle), different augmentation
    assert y0.shape == (8, 5) and y0.dtype == torch.float32
    assert_close(y0.sum(1), torch.ones(8))
    assert TensorLoader(ds, batch_size=8, augment={"mixup_alpha": 1.0},
                        num_classes=7).iter_epoch(0).__next__()[1].shape == (8, 7)


@pytest.mark.parametrize("N,world_size", [(100, 4), (103, 4), (7, 3), (2, 4)])
def test_distributed_shards_cover_the_data_set(N, world_size):
    ds = make_dataset(N=N)
    seen = []
    lengths = set()
    for rank in range(world_size):
        loader = TensorLoader(ds, batch_size=5, shuffle=True, seed=4, rank=rank, world_size=world_size)
        order = loader.order(1)
        batches = list(loader.iter_epoch(1))
        assert loader.num_samples == order.numel() == sum(len(y) for _, y in batches)
        lengths.add((len(loader), loader.num_samples))
        seen += order.tolist()
    assert len(lengths) == 1, "every rank has the same number of batches (DDP needs it)"
    assert set(seen) == set(range(N))
    pad = -(-N // world_size) * world_size - N
    assert len(seen) == N + pad
    if N % world_size == 0:
        assert sorted(seen) == list(range(N)), "each sample exactly once"


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 40), world_size=st.integers(1, 5), batch_size=st.integers(1, 9), pad=st.booleans(),
       drop_last=st.booleans(), epoch=st.integers(0, 3))
def test_sharding_laws(N, world_size, batch_size, pad, drop_last, epoch):
    ds = make_dataset(N=N, H=2, W=2)
    shards, sizes = [], set()
    for rank in range(world_size):
        try:
            loader = TensorLoader(ds, batch_size=batch_size, shuffle=True, seed=epoch, rank=rank,
                                  world_size=world_size, pad=pad, drop_last=drop_last, normalize=False)
        except DataError:
            assert drop_last  # only drop_last with less than one batch per rank is refused
            return
        order = loader.order(epoch)
        visited = [y for _, y in loader.iter_epoch(epoch)]
        # Batches are consecutive slices of this rank's order; num_samples counts what is yielded.
        assert sum(len(y) for y in visited) == loader.num_samples <= order.numel()
        assert all(len(y) == batch_size for y in visited[:-1])
        if drop_last:
            assert all(len(y) == batch_size for y in visited)
        shards.append(order.tolist())
        sizes.add(len(order))
    flat = [i for shard in shards for i in shard]
    assert set(flat) == set(range(N))  # every sample on some rank
    if pad:
        assert len(sizes) == 1 and len(flat) - N < world_size  # equal shards, fewer than world_size repeats
    else:
        assert sorted(flat) == list(range(N))  # each sample exactly once


def test_distributed_without_padding_gives_each_sample_to_one_rank():
    ds = make_dataset(N=103)
    seen = []
    for rank in range(4):
        loader = TensorLoader(ds, batch_size=8, rank=rank, world_size=4, pad=False)
        assert sum(len(y) for _, y in loader.iter_epoch(0)) == loader.num_samples == loader.order(0).numel()
        seen += loader.order(0).tolist()
    assert sorted(seen) == list(range(103))


def test_ranks_get_different_augmentation():
    ds = make_dataset(N=8)
    x = [next(TensorLoader(ds, batch_size=4, augment=AugmentConfig(rotate_degrees=30), rank=r, world_size=2,
                           normalize=False).iter_epoch(0))[0] for r in range(2)]
    assert not torch.equal(x[0], x[1])


def test_loader_argument_errors():
    ds = make_dataset()
    with pytest.raises(ConfigError, match="batch_size"):
        TensorLoader(ds, batch_size=0)
    with pytest.raises(ConfigError, match="rank"):
        TensorLoader(ds, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="augment.cutout"):
        TensorLoader(ds, batch_size=4, augment={"cutout": -2})
    with pytest.raises(ConfigError, match="num_classes"):
        TensorLoader(ds, batch_size=4, num_classes=3)


def test_plain_iteration_uses_set_epoch():
    loader = TensorLoader(make_dataset(), batch_size=50, shuffle=True)
    loader.set_epoch(2)
    assert torch.equal(next(iter(loader))[1], next(loader.iter_epoch(2))[1])


# --- tasks ---------------------------------------------------------------------------------------------

def test_tasks_are_registered():
    assert {"mnist", "mnist-embedded", "cifar10", "imagefolder"} <= set(list_tasks())


def test_mnist_embedded_task():
    task = build_task("mnist-embedded", batch_size=256, eval_batch_size=500, augment={"crop_padding": 2}, seed=1)
    assert task.num_classes == 10 and task.in_chans == 1 and task.input_shape == (1, 28, 28)
    assert task.extra["train_size"] == 8000 and task.extra["val_size"] == 2000
    assert len(task.train_loader) == 31 and task.train_loader.num_samples == 31 * 256  # last partial batch dropped
    assert len(task.val_loader) == 4 and task.val_loader.num_samples == 2000
    x, y = next(task.train_loader.iter_epoch(0))
    assert x.shape == (256, 1, 28, 28) and y.dtype == torch.int64
    assert task.val_loader.augment is None and not task.val_loader.shuffle
    small = build_task("mnist-embedded", batch_size=64, subset=100, val_subset=50)
    assert small.train_loader.num_samples == 64 and small.val_loader.num_samples == 50


def test_task_option_errors():
    with pytest.raises(ConfigError, match="subset"):
        build_task("mnist-embedded", batch_size=8, subset=0)
    with pytest.raises(ConfigError, match="batch_size"):
        build_task("mnist-embedded")
    with pytest.raises(DataError, match="mnist-embedded"):
        build_task("mnist-embeded", batch_size=8)
    with pytest.raises(DataError, match="--data-dir"):
        build_task("imagefolder", batch_size=8)


def test_mnist_and_cifar_tasks_on_the_real_files(shared_data, tmp_path, monkeypatch):
    task = build_task("mnist", batch_size=128, data_dir=shared_data / "mnist")
    assert task.extra["train_size"] == 60000 and task.extra["val_size"] == 10000
    assert task.extra["mean"] == (0.1307,) and task.extra["std"] == (0.3081,)
    monkeypatch.setenv("DLTRICKS_DATA", str(shared_data))
    assert build_task("mnist", batch_size=128, subset=1000).extra["train_size"] == 1000
