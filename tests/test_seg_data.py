"""ISBI 2012 loader, split, paired augmentation, deterministic batches and the registered task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dltricks.data.isbi import (ISBIConfig, PairAugmenter, SegmentationData, SegmentationLoader, elastic_deform,
                                isbi_split, load_isbi)
from dltricks.tasks.segmentation.isbi import isbi2012_membrane_task
from dltricks.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def isbi(shared_data: Path) -> SegmentationData:
    return load_isbi(shared_data)


def test_load_isbi(isbi: SegmentationData) -> None:
    assert isbi.images.shape == (30, 1, 512, 512) and isbi.images.dtype == torch.uint8
    assert isbi.masks.shape == (30, 1, 512, 512)
    assert set(isbi.masks.unique().tolist()) == {0, 1}
    # Membrane (label 0) is the minority class: about 22 % of the pixels.
    assert 0.21 < isbi.masks.float().mean().item() < 0.23
    assert isbi.ids[:3] == ("0", "1", "2") and isbi.ids[-1] == "29"


def test_fixed_split_and_folds() -> None:
    train, val = isbi_split(30)
    assert train == list(range(25)) and val == list(range(25, 30))
    seen = []
    for fold in range(5):
        train, val = isbi_split(30, fold=fold, num_folds=5)
        assert len(val) == 6 and sorted(train + val) == list(range(30))
        assert val == list(range(val[0], val[0] + 6))  # contiguous in z
        seen += val
    assert sorted(seen) == list(range(30))
    with pytest.raises(ConfigError, match="fold"):
        isbi_split(30, fold=5, num_folds=5)


def test_elastic_with_zero_displacement_is_identity() -> None:
    image = torch.rand(2, 1, 20, 24)
    mask = (torch.rand(2, 1, 20, 24) > 0.5).to(torch.uint8)
    out, out_mask = elastic_deform(image, mask, torch.zeros(2, 2, 3, 3))
    torch.testing.assert_close(out, image)
    assert torch.equal(out_mask, mask)


def test_elastic_constant_shift_moves_content() -> None:
    image = torch.arange(20.0).view(1, 1, 1, 20).expand(1, 1, 10, 20).contiguous()
    displacement = torch.zeros(1, 2, 3, 3)
    displacement[:, 1] = 2.0  # read from 2 columns to the right
    out, _ = elastic_deform(image, None, displacement)
    torch.testing.assert_close(out[..., :-2], image[..., 2:])


@pytest.mark.parametrize("elastic", [False, True])
def test_augmentation_keeps_image_and_mask_paired(elastic: bool) -> None:
    """On a synthetic slice whose mask is (image > 0.5), the augmented mask still matches the augmented image."""
    g = torch.Generator().manual_seed(0)
    blobs = torch.nn.functional.interpolate(torch.rand(1, 1, 8, 8, generator=g), size=(64, 64), mode="bicubic",
                                            align_corners=False)[0]  # (1, 64, 64) smooth
    image = blobs
    mask = (image > 0.5).to(torch.uint8)
    augment = PairAugmenter(ISBIConfig(crop_size=40, elastic=elastic, elastic_sigma=4.0))
    for seed in range(8):
        img, m = augment(image, mask, torch.Generator().manual_seed(seed))
        assert img.shape == (1, 40, 40) and m.shape == (1, 40, 40)
        agree = ((img > 0.5).to(torch.uint8) == m).float().mean().item()
        # Interpolation can flip pixels right at the 0.5 level set, nothing else.
        assert agree > (0.97 if elastic else 0.9999)


def _loader(data: SegmentationData, batch_size: int, **kwargs) -> SegmentationLoader:
    return SegmentationLoader(data, batch_size=batch_size, mean=(0.5,), std=(0.2,),
                              augment=PairAugmenter(ISBIConfig(crop_size=32, elastic=True)), samples_per_epoch=12,
                              seed=3, **kwargs)


def _small(isbi: SegmentationData) -> SegmentationData:
    return isbi.subset([0, 1, 2, 3], "small")


def test_batches_are_a_pure_function_of_seed_epoch_and_batch(isbi: SegmentationData) -> None:
    data = _small(isbi)
    loader = _loader(data, 3)
    assert len(loader) == 4 and loader.num_samples == 12
    full = list(loader.iter_epoch(2))
    resumed = list(loader.iter_epoch(2, start_batch=2))
    for (x1, y1), (x2, y2) in zip(full[2:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Another epoch differs; the same samples come out whatever the batch size.
    assert not torch.equal(full[0][0], next(iter(loader.iter_epoch(3)))[0])
    x_by_sample = torch.cat([x for x, _ in full])
    x_by_sample_4 = torch.cat([x for x, _ in _loader(data, 4).iter_epoch(2)])
    assert torch.equal(x_by_sample, x_by_sample_4)


def test_every_slice_used_equally_and_ranks_disjoint(isbi: SegmentationData) -> None:
    data = _small(isbi)
    loader = _loader(data, 2)
    slices = [loader._slice_of(0, j) for j in range(12)]
    assert sorted(slices) == sorted([0, 1, 2, 3] * 3)
    r0 = _loader(data, 2, rank=0, world_size=2)
    r1 = _loader(data, 2, rank=1, world_size=2)
    assert len(r0) == len(r1) == 3
    x0 = torch.cat([x for x, _ in r0.iter_epoch(0)])
    x1 = torch.cat([x for x, _ in r1.iter_epoch(0)])
    single = torch.cat([x for x, _ in _loader(data, 2).iter_epoch(0)])
    torch.testing.assert_close(torch.stack([x0, x1], 1).flatten(0, 1), single)


def test_task(shared_data: Path) -> None:
    task = isbi2012_membrane_task(batch_size=4, data_dir=shared_data, crop_size=128, loss="dice")
    assert task.num_classes == 1 and task.in_chans == 1 and task.classes == ("membrane",)
    assert len(task.train_loader) == 25 * 16 // 4  # one epoch = the training pixels in 128 px crops
    assert task.extra["val_slices"] == ("25", "26", "27", "28", "29")
    x, y = next(iter(task.train_loader.iter_epoch(0)))
    assert x.shape == (4, 1, 128, 128) and y.shape == (4, 1, 128, 128) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.5 and set(y.unique().tolist()) <= {0.0, 1.0}
    xv, yv = next(iter(task.val_loader.iter_epoch(0)))
    assert xv.shape == (1, 1, 512, 512) and len(task.val_loader) == 5
    logits = torch.where(yv > 0.5, 8.0, -8.0)
    metrics = task.batch_metrics(logits, yv)
    assert metrics["dice"] == pytest.approx(1.0) and metrics["count"] == 1.0
    assert task.loss(logits, yv).item() < 0.1
    with pytest.raises(ConfigError, match="loss"):
        isbi2012_membrane_task(batch_size=4, data_dir=shared_data, loss="focal")
    folded = isbi2012_membrane_task(batch_size=4, data_dir=shared_data, fold=0)
    assert folded.extra["val_slices"] == ("0", "1", "2", "3", "4", "5")


def test_missing_or_broken_data_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ISBI"):
        load_isbi(tmp_path)
    folder = tmp_path / "isbi2012-membrane"
    (folder / "image").mkdir(parents=True)
    (folder / "label").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "image" / "0.png")
    with pytest.raises(DataError, match="label"):
        load_isbi(tmp_path)
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(folder / "label" / "0.png")
    with pytest.raises(DataError, match="binary"):
        load_isbi(tmp_path)


def test_data_options_from_the_command_line(shared_data: Path) -> None:
    import argparse

    from dltricks.commands._args import data_args, data_overrides
    from dltricks.train.prepare import task_for_recipe
    from dltricks.train.recipe import load_recipe

    recipe = load_recipe(None, ["train.batch_size=2"])

    def task_for(data: str, *options: str):
        args = argparse.Namespace(data=data, data_dir=str(shared_data), subset=None, data_opts=list(options))
        return task_for_recipe(data, load_recipe(recipe, data_overrides(args)), **data_args(args))

    task = task_for("isbi2012-membrane", "fold=1", "num_folds=5", "crop_size=64", "elastic=true")
    assert task.extra["val_slices"] == ("6", "7", "8", "9", "10", "11")
    config = task.extra["config"]
    assert config.elastic is True and config.crop_size == 64 and config.fold == 1
    with pytest.raises(ConfigError, match="elastik"):
        task_for("isbi2012-membrane", "elastik=true")
    with pytest.raises(ConfigError, match="fold"):
        task_for("isbi2012-membrane", "fold=abc")
    with pytest.raises(ConfigError, match="takes no data options"):
        task_for("mnist-embedded", "elastic=true")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        task_for("isbi2012-membrane", "elastic")

    # A recipe's `data` section sets the same options; --data-opt wins over it.
    recipe = load_recipe("isbi-unet", ["train.batch_size=2", "data.crop_size=96"])
    assert recipe.data == {"elastic": True, "final_window": 256, "final_tta": True, "crop_size": 96}
    config = task_for("isbi2012-membrane").extra["config"]
    assert config.elastic is True and config.crop_size == 96
    assert task_for("isbi2012-membrane", "crop_size=32").extra["config"].crop_size == 32
    with pytest.raises(ConfigError, match="takes no data options"):
        task_for("mnist-embedded")  # the ISBI recipe's options do not fit MNIST
    with pytest.raises(ConfigError, match="data: got 3"):
        load_recipe(None, ["data=3"])
