"""fit() end to end on a tiny in-memory task: every recipe option runs, determinism, exact resume, NaN
handling, early stopping, overfit mode, logs and run-directory files."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from dltricks.errors import CheckpointError, ConfigError, ModelError, TrainingError
from dltricks.train import fit, load_recipe
from dltricks.train.checkpoint import read_metadata
from train_helpers import TOY, strip_times, tiny_cnn, toy_task

BASE = ["train.epochs=2", "optim.lr=0.05", *TOY]


def _fit(overrides=(), *, model=None, task=None, **kw):
    return fit(model or tiny_cnn(), task or toy_task(), load_recipe(None, [*BASE, *overrides]), progress=False, **kw)


# Every recipe option, at a non-default value, in a short run (those not here are covered by dedicated
# tests below or in test_train_parts.py / test_train_recipe.py).
OPTION_RUNS = {
    "sgd-plain": ["optim.momentum=0"],
    "sgd-nesterov-wd-skip": ["optim.nesterov=true", "optim.weight_decay=5e-4", "optim.skip_norm_bias=true"],
    "adam": ["optim.name=adam", "optim.lr=0.01", "optim.betas=[0.85, 0.99]", "optim.eps=1e-7"],
    "adamw": ["optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.05"],
    "rmsprop": ["optim.name=rmsprop", "optim.lr=0.002", "optim.alpha=0.95", "optim.momentum=0.5"],
    "adadelta": ["optim.name=adadelta", "optim.lr=1.0", "optim.rho=0.95"],
    "step": ["schedule.name=step", "schedule.step_epochs=1", "schedule.gamma=0.5"],
    "multistep": ["schedule.name=multistep", "schedule.milestones=[0.5, 1.5]"],
    "exponential": ["schedule.name=exponential", "schedule.gamma=0.5", "schedule.interval=epoch"],
    "cosine-warmup": ["schedule.name=cosine", "schedule.warmup_epochs=0.5", "schedule.warmup_start_factor=0.1",
                      "schedule.min_lr_factor=0.01"],
    "onecycle": ["schedule.name=onecycle", "schedule.pct_start=0.3", "schedule.div_factor=10",
                 "schedule.final_div_factor=100"],
    "label-smoothing": ["train.label_smoothing=0.1"],
    "clip-norm": ["train.grad_clip=1.0"],
    "clip-value": ["train.grad_clip=0.5", "train.grad_clip_mode=value"],
    "accumulation": ["train.accum_steps=3"],
    "amp-bf16": ["train.amp=true"],
    "amp-fp16-scaler": ["train.amp=true", "train.amp_dtype=float16"],
    "channels-last": ["train.channels_last=true"],
    "deterministic": ["train.deterministic=true", "train.seed=3"],
    "device-cpu": ["train.device=cpu", "train.eval_batch_size=32"],
    "ema": ["ema.decay=0.9", "ema.warmup=false", "ema.every=2"],
    "lookahead-bias-lr": ["optim.lookahead_steps=3", "optim.lookahead_alpha=0.6", "optim.skip_norm_bias=true",
                          "optim.no_decay_lr_mult=4"],
    "tta-flip": ["train.tta_flip=true"],
    "eval-every": ["train.epochs=3", "train.eval_every=2"],
    "augment": ["augment.crop_padding=1", "augment.hflip=true"],
    "augment-more": ["augment.crop_padding=2", "augment.crop_padding_mode=reflect", "augment.rotate_degrees=10",
                     "augment.cutout=3", "augment.cutmix_alpha=1.0", "augment.mixup_alpha=0.4", "augment.mix_prob=0.5"],
}


@pytest.mark.parametrize("name", list(OPTION_RUNS))
def test_every_option_trains(name):
    overrides = OPTION_RUNS[name]
    recipe = load_recipe(None, overrides)
    augment = recipe.augment
    result = _fit(overrides, task=toy_task(augment=augment if augment.active else None, seed=recipe.train.seed))
    history = result.history
    assert result.stop_reason == "completed" and len(history) == load_recipe(None, [*BASE, *overrides]).train.epochs
    assert all(math.isfinite(r["train_loss"]) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # learning
    assert 0.0 <= history[-1]["val_accuracy"] <= 1.0
    steps_per_epoch = 12 // (3 if name == "accumulation" else 1)
    assert history[-1]["step"] == steps_per_epoch * len(history)
    if name == "eval-every":
        assert "val_loss" not in history[0] and "val_loss" in history[1] and "val_loss" in history[2]
    if name == "ema":
        assert result.model is not None and not any(p.requires_grad for p in result.model.parameters())
    if name == "step":
        assert history[0]["lr"] == pytest.approx(0.05 * 0.5 ** (11 / 12 // 1))
        assert history[1]["lr"] == pytest.approx(0.025)


def test_loss_goes_down_and_metrics_are_sane():
    result = _fit(["train.epochs=4"])
    h = result.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["val_accuracy"] >= 0.9
    assert h[-1]["images_per_s"] > 0 and h[-1]["time_s"] >= h[0]["time_s"]
    assert result.final["val_accuracy"] == h[-1]["val_accuracy"] and result.final["steps"] == 48


def test_same_seed_twice_gives_identical_metrics_and_weights():
    overrides = ["train.seed=7", "augment.crop_padding=1", "ema.decay=0.8"]
    runs = []
    for _ in range(2):
        augment = load_recipe(None, overrides).augment
        runs.append(_fit(overrides, model=tiny_cnn(7, drop_rate=0.2), task=toy_task(seed=7, augment=augment)))
    assert strip_times(runs[0].history) == strip_times(runs[1].history)
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)
    other = _fit(["train.seed=8"], model=tiny_cnn(7, drop_rate=0.2), task=toy_task(seed=8))
    assert strip_times(other.history) != strip_times(runs[0].history)


RESUME_CASES = {
    "plain": [],
    "everything": ["optim.name=adamw", "optim.lr=0.01", "schedule.name=onecycle", "train.accum_steps=2",
                   "train.label_smoothing=0.1", "ema.decay=0.9", "train.grad_clip=1.0", "augment.crop_padding=1",
                   "augment.mixup_alpha=0.2", "early_stop.patience=5"],
    "fp16-scaler": ["train.amp=true", "train.amp_dtype=float16", "schedule.name=cosine"],
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
@pytest.mark.parametrize("stop_at", [5, 12])  # inside epoch 1 (mid-epoch checkpoint) / at its end
def test_resume_is_exact(tmp_path, case, stop_at):
    overrides = [*RESUME_CASES[case], "train.epochs=3", "checkpoint.every_steps=2"]
    recipe = load_recipe(None, [*BASE, *overrides])
    augment = recipe.augment if recipe.augment.active else None
    reference = fit(tiny_cnn(drop_rate=0.2), toy_task(augment=augment), recipe, progress=False)

    run_dir = tmp_path / "run"
    first = fit(tiny_cnn(drop_rate=0.2), toy_task(augment=augment),
                load_recipe(recipe, [f"train.max_steps={stop_at}"]), run_dir=run_dir, progress=False)
    assert first.stop_reason == "max_steps" and first.final["steps"] == stop_at
    # A different initialisation: everything must come from the checkpoint.
    resumed = fit(tiny_cnn(seed=123, drop_rate=0.2), toy_task(augment=augment), recipe, run_dir=run_dir,
                  resume=True, progress=False)
    assert strip_times(resumed.history) == strip_times(reference.history)
    for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values()):
        assert torch.equal(a, b)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_refuses_a_different_recipe(tmp_path):
    _fit(["train.max_steps=3"], run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="optim.lr"):
        _fit(["optim.lr=0.1"], run_dir=tmp_path, resume=True)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    notes = []
    result = _fit([], run_dir=tmp_path / "new", resume=True, log=notes.append)
    assert result.stop_reason == "completed" and any("starting from scratch" in n for n in notes)


def test_run_directory_files(tmp_path):
    notes = []
    result = _fit(["ema.decay=0.5"], run_dir=tmp_path, log=notes.append, meta={"model": "small_cnn"})
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert {"config.json", "recipe.yaml", "metrics.jsonl", "metrics.csv", "result.json", "model.safetensors",
            "checkpoints/last.safetensors", "checkpoints/best.safetensors"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[-1]["val_accuracy"]) == result.history[-1]["val_accuracy"]
    assert {"epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_s",
            "epoch_time_s"} <= set(rows[0])
    assert json.loads((tmp_path / "result.json").read_text())["stop_reason"] == "completed"
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta["model"] == "small_cnn" and meta["ema"] is True and meta["num_classes"] == 4
    assert len([n for n in notes if n.startswith("epoch ")]) == 2 and "val loss" in notes[-1]
    assert load_recipe(tmp_path / "recipe.yaml") == load_recipe(None, [*BASE, "ema.decay=0.5"])


def test_checkpoint_every_epochs_zero_still_saves_at_the_end(tmp_path):
    _fit(["checkpoint.every_epochs=0", "checkpoint.keep_best=false"], run_dir=tmp_path)
    assert read_metadata(tmp_path / "checkpoints" / "last.safetensors")["state"]["epoch"] == 2
    assert not (tmp_path / "checkpoints" / "best.safetensors").exists()


def test_nan_loss_stops_within_one_step_and_keeps_the_last_checkpoint(tmp_path):
    task = toy_task()
    poisoned_at = 17  # 17th training forward: epoch 2, batch 5 (12 batches per epoch)

    class Poison(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += self.training  # count training forwards only
            out = self.inner(x)
            return out * float("nan") if self.calls == poisoned_at else out

    model = Poison(tiny_cnn())
    with pytest.raises(TrainingError) as info:
        fit(model, task, load_recipe(None, [*BASE, "checkpoint.every_steps=4"]), run_dir=tmp_path, progress=False)
    message = str(info.value)
    # The forward of check_compatible counts as call 1, so training batch 16 (epoch 2, batch 5) is poisoned.
    assert "loss is nan at epoch 2, batch 5/12 (optimizer step 17)" in message
    assert "last good checkpoint (epoch 2, step 16)" in message and str(tmp_path) in message
    state = read_metadata(tmp_path / "checkpoints" / "last.safetensors")["state"]
    assert state["step"] == 16 and state["batch"] == 4 and state["epoch"] == 1
    for p in model.inner.parameters():  # the NaN step was not applied
        assert torch.isfinite(p).all()


def test_nan_without_run_dir_says_so():
    class Inf(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_cnn()

        def forward(self, x):
            return self.inner(x) * float("inf") if self.training else self.inner(x)

    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch 1, batch 1/12 .*no checkpoints are written"):
        _fit([], model=Inf())


def test_early_stopping():
    # A learning rate so small that the validation loss cannot improve by min_delta.
    result = _fit(["train.epochs=10", "optim.lr=1e-9", "early_stop.patience=2", "early_stop.min_delta=0.5"])
    assert result.stop_reason == "early_stop" and len(result.history) == 3
    assert result.final["best_epoch"] == 1 and "best_val_loss" in result.final
    acc = _fit(["train.epochs=3", "early_stop.patience=5", "early_stop.metric=val_accuracy"])
    assert acc.stop_reason == "completed" and "best_val_accuracy" in acc.final


def test_early_stopping_needs_validation_data():
    task = toy_task()
    task.val_loader = None
    with pytest.raises(ConfigError, match="early_stop.patience"):
        _fit(["early_stop.patience=2"], task=task)


def test_on_epoch_callback_can_stop():
    seen = []
    result = _fit(["train.epochs=5"], on_epoch=lambda r: seen.append(r["epoch"]) or r["epoch"] == 2)
    assert seen == [1, 2] and result.stop_reason == "callback"


def test_overfit_batch_reaches_a_tiny_loss(tmp_path):
    result = _fit(["train.overfit_batch=true", "train.overfit_steps=300", "train.overfit_loss=0.02",
                   "optim.name=adam", "optim.lr=0.01", "train.label_smoothing=0.2"], run_dir=tmp_path)
    assert result.stop_reason == "overfit_reached" and result.final["loss"] < 0.02
    assert result.history[0]["loss"] > 1.0  # started from chance
    assert not (tmp_path / "checkpoints").exists()
    few = _fit(["train.overfit_batch=true", "train.overfit_steps=2", "optim.lr=1e-6"])
    assert few.stop_reason == "overfit_not_reached" and len(few.history) == 2


def test_model_and_data_mismatch_is_caught_before_training(tmp_path):
    with pytest.raises(ModelError, match="takes 3-channel input but data set toy has 1 channels"):
        fit(tiny_cnn(in_chans=3), toy_task(), load_recipe(None, TOY), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    torch.manual_seed(0)
    from dltricks.models import create_model

    wide = create_model("small_cnn", num_classes=7, in_chans=1, widths=(4, 8))
    with pytest.raises(ModelError, match="outputs 7 classes but data set toy has 4"):
        fit(wide, toy_task(), load_recipe(None, TOY), progress=False)


def test_fit_accepts_recipe_mappings_and_leaves_no_global_state():
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    result = fit(tiny_cnn(), toy_task(), {"train": {"epochs": 1, "deterministic": True}, "optim": {"lr": 0.05}},
                 progress=False)
    assert len(result.history) == 1
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before


def test_evaluate_with_confusion_matrix_against_a_direct_computation():
    from dltricks.train import evaluate

    task = toy_task()
    model = _fit(["train.epochs=2"], task=task).model.eval()
    metrics = evaluate(model, task.val_loader, task, confusion=True)
    xs, ys = zip(*task.val_loader.iter_epoch(0))
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in zip(y.tolist(), pred.tolist()):
        expected[t, p] += 1
    assert torch.equal(metrics["confusion"], expected)
    assert metrics["accuracy"] == (pred == y).float().mean().item() and metrics["count"] == len(y)
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    for k in range(4):
        mask = y == k
        assert metrics["per_class_accuracy"][k] == pytest.approx((pred[mask] == k).float().mean().item())
