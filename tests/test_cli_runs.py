"""Runs a newcomer can continue and evaluate: a run killed in its first epoch restarts in place, a finished run
is extended with `--resume --epochs N`, `--init-from` starts from another run's weights, `train.max_steps`
runs print their metrics, and `dltricks eval RUN` evaluates on the data the run recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dltricks.cli import main
from dltricks.train.checkpoint import read_metadata

SMALL = ["small_cnn", "--data", "mnist-embedded", "--subset", "256", "--model-opt", "widths=[4, 8]",
         "--set", "train.batch_size=64", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


def test_killed_in_its_first_epoch_the_same_command_with_resume_finishes(tmp_path, capsys):
    out = tmp_path / "run"
    # 8,000 images in batches of 8: an epoch of 1,000 steps, killed (SIGKILL: no cleanup) as soon as it started.
    argv = ["train", "small_cnn", "--data", "mnist-embedded", "--model-opt", "widths=[4, 8]", "--epochs", "1",
            "--set", "train.batch_size=8", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "dltricks.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and (out / "config.json").exists()
    assert not (out / "checkpoints" / "last.safetensors").exists() and not (out / "result.json").exists()

    # The same command, shortened to a subset so that the test stays quick, with --resume.
    short = [*argv[:4], "--subset", "256", *argv[4:]]
    assert main([*short, "--resume"]) == 0
    assert "no checkpoint" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["steps"] == 32
    # A finished run is not started again without --resume.
    assert main(short) == 2
    assert "already holds files; pass --resume" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_checkpoint_restarts_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # what a run killed (or stopped by a NaN) in its first epoch leaves
    (out / "metrics.jsonl").write_text("")
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    assert "starting it again in place" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["meta"]["model"] == "small_cnn"


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--set", "schedule.name=cosine"]) == 0
    capsys.readouterr()
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(out), "--set", "schedule.name=cosine",
                 "--resume"]) == 0
    err = capsys.readouterr().err
    assert "extending the run: train.epochs 1 -> 3" in err and "schedule is recomputed over 3 epochs" in err
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 3 and result["steps"] == 3 * 4
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[1]["lr"] > history[2]["lr"] > 0  # one cosine over three epochs, not three restarts
    assert "epochs: 3" in (out / "recipe.yaml").read_text()
    assert json.loads((out / "config.json").read_text())["recipe"]["train"]["epochs"] == 3
    # Other recipe keys still may not change on resume.
    assert main(["train", *SMALL, "--epochs", "4", "--out", str(out), "--set", "optim.lr=0.5", "--resume"]) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_init_from_starts_from_another_runs_weights(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(first)]) == 0
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(second), "--init-from", str(first),
                 "--set", "optim.lr=1e-9", "--seed", "5"]) == 0
    assert "initialised from the weights in" in capsys.readouterr().err
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    learnt = [k for k in a if k.endswith("weight")]
    assert learnt and all((a[k] - b[k]).abs().max() < 1e-6 for k in learnt)  # lr 1e-9: the weights stay
    meta = json.loads((second / "config.json").read_text())["meta"]
    assert meta["init_from"] == str((first / "model.safetensors").resolve())
    assert main(["train", *SMALL, "--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_max_steps_runs_evaluate_and_print_their_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out), "--set", "train.max_steps=2",
                 "--set", "train.checkpoint_every_steps=1"]) == 0  # the alias of checkpoint.every_steps
    captured = capsys.readouterr()
    assert "at step 2" in captured.out and "val_accuracy" in captured.out
    assert "final val accuracy" in captured.out and "--resume continues" in captured.out
    result = json.loads((out / "result.json").read_text())
    assert result["stop_reason"] == "max_steps" and 0 <= result["val_accuracy"] <= 1
    assert json.loads((out / "config.json").read_text())["recipe"]["checkpoint"]["every_steps"] == 1
    assert read_metadata(out / "checkpoints" / "last.safetensors")["state"]["step"] == 2


def test_eval_uses_the_data_the_run_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--subset-seed", "3"]) == 0
    capsys.readouterr()
    data = json.loads((out / "config.json").read_text())["meta"]["data"]
    assert data == {"name": "mnist-embedded", "data_dir": None, "options": {}, "subset": 256, "subset_seed": 3}
    assert main(["eval", str(out), "--json"]) == 0  # no --data
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "the data the run was trained on" in captured.err
    assert report["data"] == "mnist-embedded" and report["samples"] == 2000
    assert report["accuracy"] == pytest.approx(json.loads((out / "result.json").read_text())["val_accuracy"])
    # --split train: the training subset the run drew (256 samples, seed 3), as it trained on it.
    assert main(["eval", str(out), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 256


def test_eval_json_is_valid_json_when_a_class_is_missing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--subset", "5", "--json"]) == 0  # 5 samples: at least 5 digits are absent

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    report = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert list(report["per_class_accuracy"].values()).count(None) >= 5


def test_eval_of_an_isbi_fold_uses_its_held_out_slices(shared_data, tmp_path, capsys):
    out = tmp_path / "unet"
    tiny = ["--data-opt", "crop_size=64", "--data-opt", "samples_per_epoch=4", "--model-opt", "base_channels=4",
            "--model-opt", "depth=2", "--set", "train.batch_size=2", "--epochs", "1", "--no-progress"]
    assert main(["train", "unet_small", "--data", "isbi2012-membrane", "--data-dir", str(shared_data),
                 "--data-opt", "fold=2", *tiny, "--out", str(out)]) == 0
    capsys.readouterr()
    data = json.loads((out / "config.json").read_text())["meta"]["data"]
    assert data["options"]["fold"] == 2 and data["data_dir"] == str(shared_data.resolve())
    source = json.loads((out / "config.json").read_text())["meta"]["data_source"]
    assert source["path"].endswith("isbi2012-membrane") and source["files"] == 60

    assert main(["eval", str(out), "--json"]) == 0  # neither --data nor --data-opt
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["slices"] == ["12", "13", "14", "15", "16", "17"]  # fold 2 of 5 of the 30 slices
    assert report["data_options"]["fold"] == 2 and "warning" not in captured.err

    assert main(["eval", str(out), "--data-opt", "fold=0", "--json"]) == 0  # an override: fold 0's slices
    captured = capsys.readouterr()
    assert json.loads(captured.out)["slices"] == ["0", "1", "2", "3", "4", "5"]
    assert "warning: evaluating on training data: 6 of the 6 samples" in captured.err


def test_max_steps_at_an_epoch_end_is_evaluated_whatever_eval_every_says(tmp_path, capsys):
    """A run stopped by max_steps exactly at the end of an epoch that eval_every skips still reports its
    validation metrics (it used to return a result without them)."""
    from dltricks.tasks.base import build_task
    from dltricks.train import Recipe, fit
    from dltricks.train.recipe import load_recipe

    import dltricks

    task = build_task("mnist-embedded", batch_size=32, subset=64, val_subset=32)  # 2 steps per epoch
    recipe = load_recipe(None, [("train.epochs", 4), ("train.eval_every", 3), ("train.max_steps", 2),
                                ("checkpoint.every_epochs", 0)])
    assert isinstance(recipe, Recipe)
    result = fit(dltricks.create_model("mlp"), task, recipe, progress=False)
    assert result.stop_reason == "max_steps"
    assert "val_accuracy" in result.final and 0 <= result.final["val_accuracy"] <= 1
