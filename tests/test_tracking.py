"""Run tracking: TensorBoard events that TensorBoard's own reader loads, and the status of a run directory."""

from __future__ import annotations

import json

import pytest
import torch

from dltricks.errors import TrainingError
from dltricks.models import create_model
from dltricks.train import fit, load_recipe
from dltricks.train.tracking import inference_meta, read_status, write_status

from train_helpers import toy_task

pytest.importorskip("tensorboard")


def _recipe(**train):
    base = {"epochs": 2, "batch_size": 16, "device": "cpu", "log": "tensorboard", **train}
    return load_recipe({"train": base, "optim": {"lr": 0.05}, "schedule": {"name": "cosine"}})


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_fit_writes_tensorboard_events_that_tensorboard_reads(tmp_path):
    task = toy_task()
    result = fit(create_model("mlp", num_classes=4, in_chans=1, img_size=8), task, _recipe(grad_clip=1.0),
                 run_dir=tmp_path)
    acc = _events(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss_step", "train/lr", "train/grad_norm", "epoch/train_loss", "epoch/val_loss",
            "epoch/val_accuracy", "epoch/lr", "hparams/val_accuracy"} <= scalars, scalars
    steps = result.final["steps"]
    assert [e.step for e in acc.Scalars("train/lr")] == list(range(1, steps + 1))
    assert [e.step for e in acc.Scalars("epoch/val_accuracy")] == [1, 2]
    # The event files mirror metrics.jsonl, which stays the source of truth.
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("epoch/val_loss")] == pytest.approx([r["val_loss"] for r in history])
    assert all(e.value > 0 for e in acc.Scalars("train/grad_norm"))
    assert {"images/confusion", "images/samples"} <= set(acc.Tags()["images"])
    # The HParams plugin finds the recipe.
    plugin = acc.PluginTagToContent("hparams")
    assert plugin, "no hparams summaries"
    assert read_status(tmp_path) == ("finished", "completed")


def test_no_tensorboard_folder_by_default(tmp_path):
    fit(create_model("mlp", num_classes=4, in_chans=1, img_size=8), toy_task(), _recipe(log="none", epochs=1),
        run_dir=tmp_path)
    assert not (tmp_path / "tensorboard").exists()
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["recipe"]["train"]["log"] == "none"


def test_inference_meta_records_the_normalisation():
    meta = inference_meta(toy_task())
    assert meta == {"task_kind": "classification", "normalize": {"mean": [0.4], "std": [0.25]}}


def test_status_of_failed_interrupted_and_cut_runs(tmp_path):
    model = create_model("mlp", num_classes=4, in_chans=1, img_size=8)
    # A NaN loss: the run fails, status.json says why.
    failing = tmp_path / "nan"
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    with pytest.raises(TrainingError):
        fit(model, toy_task(), _recipe(log="none"), run_dir=failing)
    status, detail = read_status(failing)
    assert status == "failed" and "TrainingError" in detail
    # max_steps: resumable, shown as interrupted.
    cut = tmp_path / "cut"
    fit(create_model("mlp", num_classes=4, in_chans=1, img_size=8), toy_task(), _recipe(log="none", max_steps=3),
        run_dir=cut)
    assert read_status(cut)[0] == "interrupted"
    write_status(cut, KeyboardInterrupt())
    assert read_status(cut)[0] == "interrupted"
    assert read_status(tmp_path / "empty")[0] == "interrupted"
