"""`subset=N`: a class-stratified random draw with a recorded seed, not the first N samples."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dltricks.data.base import stratified_indices
from dltricks.errors import DataError
from dltricks.tasks.base import build_task


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=8).filter(lambda c: sum(c) > 0),
       fraction=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1))
def test_every_class_keeps_its_share(counts, fraction, seed):
    # Labels sorted by class, as in an image-folder zip: the first N would be one class.
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    N = len(labels)
    n = max(1, round(fraction * N))
    index = stratified_indices(labels, n, seed=seed)
    assert len(index) == n and len(set(index.tolist())) == n and index.tolist() == sorted(index.tolist())
    drawn = torch.bincount(labels[index], minlength=len(counts))
    for k, c in enumerate(counts):
        assert abs(float(drawn[k]) - n * c / N) < 1.0  # largest remainder: within one of the exact share
    assert torch.equal(index, stratified_indices(labels, n, seed=seed))


def test_the_draw_is_random_and_bounded():
    labels = torch.arange(1000) // 100  # ten sorted classes
    first, second = stratified_indices(labels, 50, seed=0), stratified_indices(labels, 50, seed=1)
    assert not torch.equal(first, second)
    assert torch.bincount(labels[first]).tolist() == [5] * 10
    assert int(first.max()) > 900  # not the first samples of each class in order
    with pytest.raises(DataError, match="cannot draw 1001 samples"):
        stratified_indices(labels, 1001)


def test_task_records_the_subset_and_its_seed():
    task = build_task("mnist-embedded", batch_size=32, subset=300, val_subset=100, subset_seed=7)
    assert task.extra["subset"] == {"size": 300, "of": 8000, "seed": 7}
    assert task.extra["val_subset"] == {"size": 100, "of": 2000, "seed": 7}
    labels = task.train_loader.dataset.labels
    assert len(labels) == 300 and int(torch.bincount(labels, minlength=10).min()) >= 20
    same = build_task("mnist-embedded", batch_size=32, subset=300, subset_seed=7)
    assert torch.equal(same.train_loader.dataset.images, task.train_loader.dataset.images)


def test_isbi_subset_is_a_seeded_draw_over_the_volume(shared_data):
    """ISBI slices are consecutive sections of one volume: `subset=N` draws N of them at random (recorded), not
    the first N."""
    kwargs = dict(batch_size=1, data_dir=str(shared_data), crop_size=64)
    task = build_task("isbi2012-membrane", subset=5, val_subset=2, subset_seed=3, **kwargs)
    record = task.extra["subset"]
    assert record["size"] == 5 and record["of"] == 25 and record["seed"] == 3
    assert record["slices"] == sorted(record["slices"]) and record["slices"] != list(range(5))
    assert task.extra["val_subset"]["size"] == 2 and len(task.extra["val_slices"]) == 2
    assert build_task("isbi2012-membrane", subset=5, subset_seed=3, **kwargs).extra["subset"] == record
    assert build_task("isbi2012-membrane", subset=5, subset_seed=4, **kwargs).extra["subset"]["slices"] != \
        record["slices"]
