"""Sliding-window inference, test-time flips and PNG masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dltricks.tasks.segmentation.inference import (dihedral, dihedral_inverse, gaussian_window, predict_sliding_window,
                                             save_mask_png, tile_starts)


@given(length=st.integers(1, 300), window=st.integers(1, 128), overlap=st.floats(0.0, 0.9))
@settings(max_examples=100, deadline=None)
def test_tiles_cover_the_image(length: int, window: int, overlap: float) -> None:
    stride = max(1, int(round(window * (1 - overlap))))
    starts = tile_starts(length, window, stride)
    covered = np.zeros(max(length, window), bool)
    for s in starts:
        assert s >= 0 and (s + window <= length or length <= window)
        covered[s:s + window] = True
    assert covered[:length].all()


def test_dihedral_inverse_round_trip() -> None:
    x = torch.randn(2, 3, 5, 5)
    images = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(images) == 8  # eight distinct transforms
    for k in range(8):
        torch.testing.assert_close(dihedral_inverse(dihedral(x, k), k), x)


def test_pointwise_model_sliding_window_equals_whole_image() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(2, 3, 1).eval()
    x = torch.randn(2, 2, 70, 53)
    with torch.no_grad():
        expected = model(x)
    for weighting in ("gaussian", "uniform"):
        out = predict_sliding_window(model, x, window=32, overlap=0.5, weighting=weighting, batch_size=3)
        torch.testing.assert_close(out, expected)
    # An equivariant model gives the same result under test-time flips.
    torch.testing.assert_close(predict_sliding_window(model, x, window=32, tta=True), expected)


def _exact_1d(length: int, window: int, stride: int) -> torch.Tensor:
    """Positions where every tile covering them has them >= 1 px inside (or on the image border)."""
    ok = torch.ones(length, dtype=torch.bool)
    for s in tile_starts(length, window, stride):
        for p in range(s, s + window):
            inside = s + 1 <= p <= s + window - 2 or (p == 0) or (p == length - 1)
            ok[p] &= inside
    return ok


def test_conv_model_exact_except_at_inner_tile_edges() -> None:
    """A 3x3 conv sees zero padding at a tile's edge: blended logits are exact wherever no covering tile has
    the pixel on its edge, and wrong somewhere else (the reason for overlap and Gaussian weights)."""
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1).eval()
    x = torch.randn(1, 1, 40, 40)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(predict_sliding_window(model, x, window=40), expected)  # one tile: exact
    out = predict_sliding_window(model, x, window=24, overlap=0.5, weighting="gaussian")
    exact = _exact_1d(40, 24, 12)
    mask = exact[:, None] & exact[None, :]
    assert 0 < mask.float().mean() < 1
    torch.testing.assert_close(out[0, 0][mask], expected[0, 0][mask])
    assert (out - expected).abs()[0, 0][~mask].max() > 1e-3


def test_image_smaller_than_window_is_padded() -> None:
    model = nn.Conv2d(1, 1, 1).eval()
    x = torch.randn(1, 1, 10, 7)
    with torch.no_grad():
        torch.testing.assert_close(predict_sliding_window(model, x, window=16), model(x))


def test_gaussian_window() -> None:
    w = gaussian_window(9)
    assert w.shape == (9, 9) and w.max().item() == pytest.approx(1.0) and w.min() > 0
    torch.testing.assert_close(w, w.flip(0))
    assert w[4, 4] == w.max()


def test_save_mask_png_round_trip(tmp_path: Path) -> None:
    from PIL import Image

    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[1:3, 2:4] = True
    path = tmp_path / "sub" / "mask.png"
    save_mask_png(mask, path, foreground=0, background=255)  # ISBI convention: membrane black
    with Image.open(path) as img:
        assert img.mode == "L" and img.size == (5, 6)
        pixels = np.asarray(img)
    assert set(np.unique(pixels).tolist()) == {0, 255}
    assert np.array_equal(pixels == 0, mask.numpy())
    with pytest.raises(ValueError):
        save_mask_png(torch.zeros(1, 2, 2), tmp_path / "bad.png")


def test_segmentation_eval_branch_writes_masks(shared_data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    import argparse
    import json

    from dltricks.tasks.segmentation.isbi import isbi2012_membrane_task
    from dltricks.models.segmentation.unet import UNet
    from dltricks.commands.eval import _run_segmentation_eval as run_segmentation_eval
    from dltricks.tasks.segmentation.evaluate import is_segmentation_task

    task = isbi2012_membrane_task(batch_size=500, data_dir=shared_data, val_subset=2)  # eval-sized batch is fine
    assert is_segmentation_task(task)
    torch.manual_seed(0)
    model = UNet(num_classes=1, in_chans=1, base_channels=2, depth=2)
    args = argparse.Namespace(window=256, overlap=0.5, tta=False, save_masks=str(tmp_path / "masks"), json=True,
                              split="val")
    assert run_segmentation_eval(args, model, task, checkpoint="x.safetensors", model_name="unet") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and 0 <= report["dice"] <= 1 and report["window"] == 256
    # val_subset=2 draws 2 of the held-out slices 25-29 at random (seeded): the masks are named by slice
    expected = sorted(f"{i}.png" for i in task.extra["val_slices"])
    assert len(expected) == 2 and sorted(Path(p).name for p in report["masks"]) == expected
    from PIL import Image

    with Image.open(tmp_path / "masks" / expected[0]) as img:
        assert img.size == (512, 512) and img.mode == "L"


def test_train_and_eval_unet_from_the_command_line(shared_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """`dltricks train unet ... --data isbi2012-membrane` and `dltricks eval` work like classification; eval
    gives the segmentation report (not a confusion matrix), on either split, and writes masks."""
    import json

    from dltricks.cli import main

    out = tmp_path / "run"
    data = ["--data", "isbi2012-membrane", "--data-dir", str(shared_data), "--data-opt", "fold=4"]
    assert main(["train", "unet", *data, "--subset", "2", "--epochs", "1", "--no-progress",
                 "--model-opt", "base_channels=4", "--model-opt", "depth=2", "--set", "train.batch_size=2",
                 "--data-opt", "crop_size=64", "--data-opt", "samples_per_epoch=4",
                 "--data-opt", "border_weight=10", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "val Dice" in captured.out and " dice " in captured.err  # results table and epoch log line
    assert main(["eval", str(out), *data, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "val" and report["images"] == 6  # fold 4 of 5 holds out slices 24-29
    for key in ("dice", "iou", "boundary_f1", "dice_tolerance1", "isbi_pixel_error"):
        assert 0.0 <= report[key] <= 1.0, key
    assert "confusion" not in report
    assert main(["eval", str(out), *data, "--split", "train", "--subset", "2", "--window", "256", "--json",
                 "--save-masks", str(tmp_path / "masks")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "train" and report["images"] == 2 and report["window"] == 256
    names = sorted(Path(p).name for p in report["masks"])  # 2 of the training slices 0-24, drawn at random
    assert len(names) == 2 and all(0 <= int(n.removesuffix(".png")) <= 24 for n in names)


def test_compare_reports_the_dice_of_segmentation_models(shared_data: Path, tmp_path: Path) -> None:
    import csv

    from dltricks.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "unet_small", "--data", "isbi2012-membrane", "--data-dir", str(shared_data),
                 "--subset", "2", "--epochs", "1", "--quick", "--batch", "2", "--no-progress",
                 "--set", "train.batch_size=2", "--data-opt", "crop_size=64", "--data-opt", "samples_per_epoch=4",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert rows[0]["model"] == "unet_small" and 0.0 <= float(rows[0]["dice"]) <= 1.0
    assert "val Dice" in (out / "leaderboard.md").read_text()
